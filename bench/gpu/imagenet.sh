# call 1 or 2: a CIFAR piece (PIECE); the ImageNet-format benchmark: native and torchvision
# loaders, and ResNet-34 B end to end (native, torchvision, synthetic) on 5,000 photos.
set -u; export PYTHONUNBUFFERED=1; S=$(date +%s)
mkdir -p /tmp/stage && cp .stage/${PIECE:-02}/* /tmp/stage/ && ls /tmp/stage | wc -l
[ -n "${GRAPHCHECK:-}" ] && timeout 60 python3 bench/gpu/graphcheck.py 2>&1 | tail -8
timeout ${BENCH_TIMEOUT:-230} python3 tools/bench.py --backends native,torchvision --only loaders,e2e \
  --photos ${PHOTOS:-5000} --sources build/photo-sources --work /tmp/bench \
  --out $OUT --name ${NAME:-gpu-$(date +%F)-imagenet} --steps ${STEPS:-60} ${BENCH_EXTRA:-} > $OUT/bench-imagenet.log 2>&1
echo "exit $?"; tail -45 $OUT/bench-imagenet.log
# each stage of a native batch, and the loader and ResNet-34 B each alone and beside each other
timeout ${STAGES_TIMEOUT:-90} python3 -m tools.benchmark.loader_stages --records /tmp/bench/records/imagenet \
  --batches ${STAGE_BATCHES:-15} ${STAGES_EXTRA:-} --out $OUT/loader-stages.json 2>&1 | tail -25
echo "== done $(( $(date +%s)-S ))s"
