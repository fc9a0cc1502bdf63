#!/usr/bin/env bash
# Superseded by bench/ped2_gpu_run.py (deadline-aware, one worker for the queue, stacked groups).
# Run benchmarks/ped2.toml on one GPU machine with K concurrent serial drivers sharing one store
# (each job is claimed by a lock, so nothing runs twice), each killed at DEADLINE seconds.
# Usage (from the repo root; data under DATA_ROOT/ped2):
#   bench/ped2_gpu_run.sh DATA_ROOT STORE [K=3] [DEADLINE_S=540] [SPEC=benchmarks/ped2.toml]
set -uo pipefail
data=$1; store=$2; k=${3:-3}; deadline=${4:-540}; spec=${5:-benchmarks/ped2.toml}
export OCCBENCH_CACHE=${OCCBENCH_CACHE:-/tmp/occbench-cache} PYTHONUNBUFFERED=1
logs="$store.logs"; mkdir -p "$logs"
# decode Ped2 into the frame cache once, before the drivers start
python3 - "$data" <<'PY'
import sys, time
from occbench.harness import registry
t = time.time()
ds = registry.datasets.get("ped2")(root=sys.argv[1], size=[256, 256], channels=1)
s = ds.load()
print(f"ped2 cached: {s.train.n_items} train / {s.test.n_items} test frames in {time.time()-t:.1f} s")
PY
pids=()
for i in $(seq 1 "$k"); do
  timeout -s INT "$deadline" occbench run "$spec" --store "$store" --data-root "$data" \
    --runner serial --device cuda --no-check-data --no-board > "$logs/driver$i.log" 2>&1 &
  pids+=($!)
  sleep 2
done
while [ -n "$(jobs -rp)" ]; do nvidia-smi --query-gpu=utilization.gpu,memory.used \
  --format=csv,noheader >> "$logs/gpu.log"; sleep 10; done
wait
tail -n 5 "$logs"/driver*.log
