set -u; export PYTHONUNBUFFERED=1; S=$(date +%s)
mkdir -p /tmp/stage && cp .stage/02/* /tmp/stage/ && ls /tmp/stage
timeout 60 python3 bench/gpu/graphcheck.py 2>&1 | tail -8
echo "== done $(( $(date +%s)-S ))s"
