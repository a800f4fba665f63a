#!/usr/bin/env bash
# Regenerates docs/experiments (the paper's experiments on synthetic phantoms) from the
# shipped checkpoints. Test cohorts are regenerated deterministically from their seeds.
# Tables 3 and 4a use the ablation checkpoints of scripts/train_ablation_runs.sh (not shipped:
# seven more models; about 25 min each on one CPU thread); rows whose checkpoint is missing
# are left out and the report says they did not run.
# Usage: scripts/reproduce_report.sh   (about 10-20 min on a 2-core CPU)
set -euo pipefail
cd "$(dirname "$0")/.."
LLMCTV=${LLMCTV:-.venv/bin/llmctv}
DATA=${DATA:-out/demo-model}
ABL=${ABLATION:-$DATA/ablation}
[ -f "$DATA/test-A/cohort.json" ] || $LLMCTV phantoms --out "$DATA/test-A" --cases 16 --site A --seed 202 --scale 0.25
[ -f "$DATA/test-B/cohort.json" ] || $LLMCTV phantoms --out "$DATA/test-B" --cases 16 --site B --seed 303 --scale 0.25
rows=()
for frac in 40 60 80 100; do
  [ -f "$ABL/frac$frac/best/model.safetensors" ] && rows+=(--data-efficiency "$frac%=$ABL/frac$frac/best")
done
[ -f "$ABL/frac100/best/model.safetensors" ] && rows+=(--tuning-modes "multi_prompt=$ABL/frac100/best")
for mode in single_prompt lora none; do
  [ -f "$ABL/$mode/best/model.safetensors" ] && rows+=(--tuning-modes "$mode=$ABL/$mode/best")
done
[ ${#rows[@]} -gt 0 ] || echo "no ablation checkpoints in $ABL: Tables 3 and 4a will say 'not run'" >&2
rm -rf docs/experiments/report.md docs/experiments/report.json docs/experiments/figures  # structures/ stays
$LLMCTV experiments \
  --model multimodal=checkpoints/demo --model vision-only=checkpoints/demo-vision \
  --internal "$DATA/test-A" --external "$DATA/test-B" "${rows[@]}" \
  --cache "$ABL/results" --out docs/experiments --device cpu --seed 0 --max-overlays 2 "$@"
