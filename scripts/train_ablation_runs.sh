#!/usr/bin/env bash
# Trains the ablation models of the report at one reduced, equal budget (from scratch, on the
# counterfactual site-A training set; 500 steps of batch 2, half of them pairing two notes of a CT):
#   frac40 frac60 frac80 frac100   Table 3, share of the training CTs (each with all its notes)
#   single_prompt lora none        Table 4a, text-side tuning modes (multi_prompt = frac100)
# Usage: scripts/train_ablation_runs.sh [WORK_DIR] [RUN ...]   (default out/demo-model, all runs)
# Each run writes WORK_DIR/ablation/<run>/best; scripts/reproduce_report.sh picks them up.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-out/demo-model}
shift || true
RUNS=("$@")
[ ${#RUNS[@]} -gt 0 ] || RUNS=(frac100 frac40 frac60 frac80 single_prompt lora none)
LLMCTV=${LLMCTV:-.venv/bin/llmctv}
[ -f "$WORK/train-A-cf/clinical.csv" ] ||
  $LLMCTV phantoms --out "$WORK/train-A-cf" --cases 48 --site A --seed 101 --scale 0.25 --counterfactuals
common=(--data "$WORK/train-A-cf" --cache "$WORK/ablation/cache" --preset cpu --spacing 6 4 4
        --epochs "${EPOCHS:-25}" --steps-per-epoch "${STEPS:-20}" --batch-size 2 --lr 1e-3
        --val-fraction 0.15 --seed 0 --device cpu --text-encoder smollm2 --pair-fraction 0.5)
for run in "${RUNS[@]}"; do
  case "$run" in
    frac*) extra=(--train-fraction "$(awk "BEGIN{print ${run#frac}/100}")") ;;
    single_prompt|lora|none) extra=(--tuning "$run") ;;
    *) echo "unknown run $run" >&2; exit 2 ;;
  esac
  [ -f "$WORK/ablation/$run/best/model.safetensors" ] && [ -z "${FORCE:-}" ] && continue
  $LLMCTV train "${common[@]}" "${extra[@]}" --out "$WORK/ablation/$run"
done
