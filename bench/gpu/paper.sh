# call 3: the last CIFAR piece; assemble, convert; the ResNet-32 paper schedule (64k
# iterations, batch 128). MODE: the step mode's overrides (default: the run's own auto mode;
# FROM_PROJECTION=1 picks the fastest of call 1's projection). REPEAT=2 runs it again right after,
# with torch.compile's caches warm (what a user's second run gets): resnet32-paper-2.
set -u; export PYTHONUNBUFFERED=1; S=$(date +%s)
mkdir -p /tmp/stage && cp .stage/03/* /tmp/stage/ 2>/dev/null; ls /tmp/stage
python3 .stage/03/assemble.py /tmp/stage /tmp/staged || exit 1
timeout 60 python3 tools/convert.py cifar10 --src /tmp/staged/cifar-10-python.tar.gz --out /tmp/records --formats arrays 2>&1 | tail -3
MODE=${MODE:-run.compile=auto run.cuda_graph=auto}
if [ -n "${FROM_PROJECTION:-}" ]; then MODE=$(python3 - <<'PY'
import json
modes = {"graph": "run.compile=false run.cuda_graph=true", "eager": "run.compile=false run.cuda_graph=false",
         "graph+default": "run.compile=default run.cuda_graph=true", "default": "run.compile=default run.cuda_graph=false",
         "reduce-overhead": "run.compile=reduce-overhead run.cuda_graph=false"}
try:
    rows = [r for r in json.load(open("/tmp/projection.json")) if "projected_minutes" in r]
    best = min(rows, key=lambda r: r["projected_minutes"])["mode"]
except Exception:
    best = "graph"
print(modes[best])
PY
); fi
for N in $(seq 1 ${REPEAT:-1}); do
  NAME=resnet32-paper$([ $N -gt 1 ] && echo "-$N")
  echo "== $NAME with: $MODE  ($(( $(date +%s)-S ))s)"
  ( while sleep 10; do cp /tmp/runs/$NAME/metrics.jsonl $OUT/$NAME-metrics.jsonl 2>/dev/null; done ) >/dev/null 2>&1 &
  W=$!
  timeout ${PAPER_TIMEOUT:-430} python3 train/run.py configs/resnet32.yaml data.root=/tmp/records/cifar10 $MODE \
    run.out_dir=/tmp/runs run.name=$NAME run.progress=false ${PAPER_EXTRA:-} > $OUT/$NAME.log 2>&1
  echo "exit $?"; kill $W; tail -6 $OUT/$NAME.log
  # two files a run come back (8 at most in all): its log, and its folder without checkpoints
  tar czf $OUT/$NAME.tgz -C /tmp/runs --exclude='*.pt' $NAME && rm -f $OUT/$NAME-metrics.jsonl
done
echo "== done $(( $(date +%s)-S ))s"
