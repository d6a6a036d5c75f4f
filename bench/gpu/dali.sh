# The last call of the DALI pieces (.stage-dali/NN carried; the earlier ones copied into
# /tmp/stage by back-to-back calls; bench/gpu/stage_dali.sh makes them): install, then the CUDA
# tests and DALI's loader and end-to-end rows beside native on the ImageNet-format photo set
# (build/photo-sources carried too). Dry-run on CPU 2026-12-05 (50 s with --smoke).
set -u; export PYTHONUNBUFFERED=1; S=$(date +%s)
mkdir -p /tmp/stage && cp .stage-dali/${PIECE:-05}/* /tmp/stage/ && ls /tmp/stage | wc -l
python3 .stage-dali/${PIECE:-05}/assemble.py /tmp/stage /tmp/staged-dali > /dev/null || exit 1
# Into the machine's own site-packages, as a user's pip install would go (a PYTHONPATH folder
# would put a second nvidia/ package, and its nvJPEG, ahead of torch's), and only what is not
# installed there yet: torch's nvJPEG and anything else the machine has stay as they are.
MISSING=$(for w in /tmp/staged-dali/*.whl; do d=$(basename $w | cut -d- -f1)
  python3 -m pip show -q ${d//_/-} > /dev/null 2>&1 || echo $w; done)
echo "installing: $(echo $MISSING | xargs -n1 basename 2>/dev/null | tr '\n' ' ')"
[ -z "$MISSING" ] || python3 -m pip install -q --no-index --no-deps --no-compile \
  --break-system-packages $MISSING || exit 1
python3 -c "import nvidia.dali as d, numpy; print('dali', d.__version__, 'numpy', numpy.__version__)"
echo "== dali cuda tests $(( $(date +%s)-S ))s"
timeout ${TESTS_TIMEOUT:-150} python3 -m pytest -q -m cuda -p no:cacheprovider -rfE tests/ \
  > $OUT/dali-tests.log 2>&1  # every CUDA test, DALI's GPU route (test_gpu_route_matches_cpu) now in
echo "exit $?"; tail -15 $OUT/dali-tests.log
echo "== dali bench $(( $(date +%s)-S ))s"
timeout ${BENCH_TIMEOUT:-300} python3 tools/bench.py --backends dali,native --only loaders,e2e \
  --photos ${PHOTOS:-4000} --sources build/photo-sources --work /tmp/bench --out $OUT \
  --name ${NAME:-gpu-$(date +%F)-dali} --steps ${STEPS:-40} ${BENCH_EXTRA:-} > $OUT/bench-dali.log 2>&1
echo "exit $?"; tail -30 $OUT/bench-dali.log
echo "== done $(( $(date +%s)-S ))s"
