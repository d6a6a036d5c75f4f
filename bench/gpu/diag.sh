# compile=default, no CUDA graph, ResNet-32 on 9,000 fake CIFAR train images (70 it/epoch):
# does the step slow down after ~16 epochs, and does it recompile? (TORCH_LOGS=recompiles)
python3 -c "
import sys; from pathlib import Path; sys.path[:0] = ['tests', '.']
from fixtures import write_tiny_cifar
print(write_tiny_cifar(Path('/tmp/fake'), n_train=10000, n_test=1000))"
DEV=${DEV:-cuda}
TORCH_LOGS=recompiles timeout ${DIAG_TIMEOUT:-75} python3 train/run.py configs/resnet32.yaml data.root=/tmp/fake/cifar10 data.val_size=1000 \
  run.device=$DEV run.compile=default run.cuda_graph=false schedule.unit=epoch schedule.total=${EPOCHS:-24} \
  schedule.milestones=[${MILESTONE:-20}] run.out_dir=/tmp/runs run.name=diag run.progress=false run.log_every=10 run.ckpt_every=0 ${DIAG_EXTRA:-}
python3 - <<'PY'
import json
rows = [json.loads(l) for l in open('/tmp/runs/diag/metrics.jsonl')]
ep = [r for r in rows if r['kind'] == 'epoch']
prev = 0.0
for r in ep:
    print(f"epoch {r['epoch']:3d} iter {r['iter']:5d} train_time {r['train_time'] - prev:6.2f}s")
    prev = r['train_time']
steps = [r['step_ms'] for r in rows if r['kind'] == 'train']
gpu = [r.get('gpu_step_ms') for r in rows if r['kind'] == 'train']
print('step_ms first/last 10:', [round(s, 1) for s in steps[:10]], [round(s, 1) for s in steps[-10:]])
print('gpu_step_ms last 10:', [round(g or 0, 1) for g in gpu[-10:]])
for r in rows:
    if r['kind'] == 'event':
        print('EVENT', r['iter'], r['message'])
try:
    s = json.load(open('/tmp/runs/diag/summary.json'))
    print('speed', json.dumps(s.get('speed')), 'step', s.get('step'))
except OSError as e:
    print('no summary:', e)
PY
cp /tmp/runs/diag/metrics.jsonl $OUT/diag-metrics.jsonl 2>/dev/null || true
