#!/usr/bin/env bash
# Regenerates docs/experiments (the paper's experiments on synthetic phantoms) from the
# shipped checkpoints. Test cohorts are regenerated deterministically from their seeds.
# Usage: scripts/reproduce_report.sh   (about 10-20 min on a 2-core CPU)
set -euo pipefail
cd "$(dirname "$0")/.."
LLMCTV=${LLMCTV:-.venv/bin/llmctv}
DATA=${DATA:-out/demo-model}
[ -f "$DATA/test-A/cohort.json" ] || $LLMCTV phantoms --out "$DATA/test-A" --cases 16 --site A --seed 202 --scale 0.25
[ -f "$DATA/test-B/cohort.json" ] || $LLMCTV phantoms --out "$DATA/test-B" --cases 16 --site B --seed 303 --scale 0.25
rm -rf docs/experiments
$LLMCTV experiments \
  --model multimodal=checkpoints/demo --model vision-only=checkpoints/demo-vision \
  --internal "$DATA/test-A" --external "$DATA/test-B" \
  --tuning-modes multi_prompt=checkpoints/demo --tuning-modes none=checkpoints/demo-tuning-none \
  --out docs/experiments --device cpu --seed 0 --max-overlays 2 "$@"
