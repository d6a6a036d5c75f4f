# call 2: CIFAR piece 02; the ImageNet-format benchmark: native and torchvision loaders, and
# ResNet-34 B end to end (native, torchvision, synthetic) on 5,000 photos.
set -u; export PYTHONUNBUFFERED=1; S=$(date +%s)
mkdir -p /tmp/stage && cp .stage/${PIECE:-02}/* /tmp/stage/ && ls /tmp/stage | wc -l
[ -n "${GRAPHCHECK:-}" ] && timeout 60 python3 bench/gpu/graphcheck.py 2>&1 | tail -8
timeout ${BENCH_TIMEOUT:-230} python3 tools/bench.py --backends native,torchvision --only loaders,e2e \
  --photos ${PHOTOS:-5000} --sources build/photo-sources --cifar /nonexistent --work /tmp/bench \
  --out $OUT --name h200-16c-2026-12-04-imagenet --steps ${STEPS:-60} ${BENCH_EXTRA:-} > $OUT/bench-imagenet.log 2>&1
echo "exit $?"; tail -45 $OUT/bench-imagenet.log
echo "== done $(( $(date +%s)-S ))s"
