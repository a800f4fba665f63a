#!/usr/bin/env bash
# The prepared script for the lent GPU of session 2 (run from the repository root there):
# 1. a whole LUNG1-sized study at the paper's size on this GPU (target <= 5 s on one H100);
# 2. does counterfactual training (same CT, perturbed note, recomputed target) make the
#    network follow the text? (tiny-llama encoder; probe on 8 held-out phantoms).
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
timeout 150 python3 benchmarks/bench_model.py --device cuda --repeats 5 --study --skip-context \
  2>&1 | tee "$OUT/bench_model_gpu.txt"
timeout 330 python3 scripts/probe_text_engagement.py --device cuda --encoder tiny-llama \
  --counterfactuals --cases 32 --epochs 60 --steps 50 --batch-size 4 --every 5 --budget-s 290 \
  2>&1 | tee "$OUT/probe_counterfactual.txt"
