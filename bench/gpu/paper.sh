# call 3: the last CIFAR piece; assemble, convert; the ResNet-32 paper schedule (64k
# iterations, batch 128) in the step mode the projection of call 1 found fastest.
set -u; export PYTHONUNBUFFERED=1; S=$(date +%s)
mkdir -p /tmp/stage && cp .stage/03/* /tmp/stage/ 2>/dev/null; ls /tmp/stage
python3 .stage/03/assemble.py /tmp/stage /tmp/staged || exit 1
timeout 60 python3 tools/convert.py cifar10 --src /tmp/staged/cifar-10-python.tar.gz --out /tmp/records --formats arrays 2>&1 | tail -3
MODE=$(python3 - <<'PY'
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
)
echo "== paper run with: $MODE  ($(( $(date +%s)-S ))s)"
( while sleep 10; do cp /tmp/runs/resnet32-paper/metrics.jsonl $OUT/paper-metrics.jsonl 2>/dev/null; done ) >/dev/null 2>&1 &
W=$!
timeout ${PAPER_TIMEOUT:-430} python3 train/run.py configs/resnet32.yaml data.root=/tmp/records/cifar10 $MODE \
  run.out_dir=/tmp/runs run.name=resnet32-paper run.progress=false ${PAPER_EXTRA:-} > $OUT/paper.log 2>&1
echo "exit $?"; kill $W; tail -12 $OUT/paper.log
for f in summary.json curves.png metrics.jsonl config.yaml; do cp /tmp/runs/resnet32-paper/$f $OUT/paper-$f 2>/dev/null; done
echo "== done $(( $(date +%s)-S ))s"
