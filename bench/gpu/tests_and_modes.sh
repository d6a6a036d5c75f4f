# call 1: CIFAR piece 01 to /tmp/stage; CUDA tests; the decode reproducer; paper-schedule
# projection per step mode; the compile=default slowdown diagnosis (short epochs, fake CIFAR).
set -u; export PYTHONUNBUFFERED=1; S=$(date +%s)
mkdir -p /tmp/stage && cp .stage/01/* /tmp/stage/ && ls -la /tmp/stage | tail -3
( nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
  python3 -c "import torch, torchvision, sys; print(sys.version.split()[0], torch.__version__, torchvision.__version__, torch.cuda.get_device_name())"
  nproc ) > $OUT/machine.txt 2>&1; cat $OUT/machine.txt
echo "== cuda tests $(( $(date +%s)-S ))s"
timeout 150 python3 -m pytest -q -m cuda -p no:cacheprovider -p no:warnings -rfE > $OUT/cuda-tests.log 2>&1; echo "exit $?"; tail -25 $OUT/cuda-tests.log
echo "== decode order $(( $(date +%s)-S ))s"
timeout 50 python3 -m tools.benchmark.decode_order --rounds 50 > $OUT/decode-order.jsonl 2>&1; echo "exit $?"; cat $OUT/decode-order.jsonl | tail -4
echo "== projection $(( $(date +%s)-S ))s"
timeout 150 python3 -m tools.benchmark.paper_projection --modes graph,eager,graph+default --steps 300 --out $OUT/projection.json 2>&1 | tail -12; cp $OUT/projection.json /tmp/projection.json
echo "== slowdown diagnosis $(( $(date +%s)-S ))s"
bash bench/gpu/diag.sh > $OUT/diag.log 2>&1; echo "exit $?"; tail -40 $OUT/diag.log
echo "== done $(( $(date +%s)-S ))s"
