#!/usr/bin/env bash
# The one prepared script for a lent GPU machine (run from the repository root there).
# Wheels for packages the GPU image lacks travel in .whl/ (see README, Performance).
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 benchmarks/bench_model.py --device cuda --repeats 5 --study --skip-context 2>&1 | tee "$OUT/bench_model_gpu.txt"
python3 benchmarks/bench_training_gpu.py 2>&1 | tee "$OUT/bench_training_gpu.txt"
