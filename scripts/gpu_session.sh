#!/usr/bin/env bash
# The GPU measurements of docs/benchmarks.md, as run on the lent H100 machine (no network there: the packages it
# lacks travel as wheels in ./.whl, made here with `bash ../shared/device/make-wheels.sh stable-baselines3==2.9.2`).
#   bash scripts/gpu_session.sh bench   # CUDA tests, then the atari-gpu and peers suites   (~3-4 min, at most 5)
#   bash scripts/gpu_session.sh pong    # experiment=atari_fast on Pong for a fixed wall clock  (~8 min, at most 9)
# The device budget is 15 minutes a session, machine start (~1.5 min) included: the two calls fit once, with
# no time for a rerun, so each step has its own timeout and writes its log to $OUT as it goes.
# Results go to $OUT (the device tool's folder that comes back), else ./outputs/gpu_session.
set -u
mode=${1:?usage: gpu_session.sh bench|pong}
OUT=${OUT:-$PWD/outputs/gpu_session}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target .site .whl/*.whl || exit 1
fi
export PYTHONPATH=$PWD/src:$PWD/.site PYTHONUNBUFFERED=1 WANDB_MODE=offline
nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm --format=csv,noheader
python3 -c "import torch, pytorch_lightning as pl, gymnasium, ale_py; print('torch', torch.__version__, 'lightning', pl.__version__, 'gymnasium', gymnasium.__version__, 'ale-py', ale_py.__version__, 'cpus', __import__('os').cpu_count())"

case $mode in
bench)
  timeout 90 python3 -m pytest -q -p no:cacheprovider tests/test_fast_path.py 2>&1 | tee "$OUT/pytest_gpu.log" | tail -25
  timeout 140 python3 scripts/benchmark.py atari-gpu --envs 16 32 --steps ${STEPS:-40000} 2>&1 | tee "$OUT/atari_gpu.log" | tail -12
  timeout 90 python3 scripts/benchmark.py peers --envs 16 --steps ${PEER_STEPS:-20000} --sb3-steps ${SB3_STEPS:-3000} 2>&1 | tee "$OUT/peers.log" | tail -10
  ;;
pong)
  # Lightning's max_time ends training at this wall clock; the final evaluation follows.
  timeout 540 python3 train.py experiment=atari_fast env=pong trainer=gpu "+trainer.max_time=${MAX_TIME:-00:00:07:00}" \
    progress_bar=false "~checkpoint" "hydra.run.dir=$OUT/pong" "${@:2}" 2>&1 | tail -30
  python3 - "$OUT/pong/metrics.csv" <<'EOF'
import csv, sys
wall = {}
for r in csv.DictReader(open(sys.argv[1])):
    if r.get("perf/wall_s"):
        wall[r["env_steps"]] = float(r["perf/wall_s"])
    if r.get("eval/return_mean"):
        w = wall.get(r["env_steps"], float("nan"))
        print(f"env_steps {float(r['env_steps']):>10,.0f}  wall_s {w:6.0f}  eval/return_mean {float(r['eval/return_mean']):6.1f}")
EOF
  ;;
esac
