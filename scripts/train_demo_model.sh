#!/usr/bin/env bash
# Reproduces the shipped CPU demo models (multimodal + vision-only) from synthetic phantoms.
# Usage: scripts/train_demo_model.sh [WORK_DIR [multimodal|multimodal-cf|finetune-cf|vision|none]]
#        (default out/demo-model multimodal). multimodal-cf trains on the same 48 cases plus their
#        counterfactual notes (laterality flip, N switch: same CT, recomputed target).
#        finetune-cf continues from multimodal-cf's best checkpoint (a new schedule) with half of
#        the batches pairing two notes of one CT; its best checkpoint is checkpoints/demo.
# Wall time on a 2-core CPU is reported in docs/ and the README.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-out/demo-model}
LLMCTV=${LLMCTV:-.venv/bin/llmctv}
EPOCHS=${EPOCHS:-60}
STEPS=${STEPS:-30}
mkdir -p "$WORK"
[ -f "$WORK/train-A/clinical.csv" ] || $LLMCTV phantoms --out "$WORK/train-A" --cases 48 --site A --seed 101 --scale 0.25
common=(--data "$WORK/train-A" --preset cpu --spacing 6 4 4 --epochs "$EPOCHS" --steps-per-epoch "$STEPS"
        --batch-size 2 --lr 1e-3 --val-fraction 0.15 --seed 0 --device cpu)
case "${2:-multimodal}" in
  multimodal-cf|finetune-cf) [ -f "$WORK/train-A-cf/clinical.csv" ] ||
    $LLMCTV phantoms --out "$WORK/train-A-cf" --cases 48 --site A --seed 101 --scale 0.25 --counterfactuals ;;
esac
case "${2:-multimodal}" in
  multimodal-cf) $LLMCTV train "${common[@]}" --data "$WORK/train-A-cf" --out "$WORK/multimodal-cf" --text-encoder smollm2 ;;
  finetune-cf) $LLMCTV train "${common[@]}" --data "$WORK/train-A-cf" --out "$WORK/finetune-cf" \
                 --text-encoder smollm2 --init-from "$WORK/multimodal-cf/best" --pair-fraction 0.5 \
                 --epochs "${FT_EPOCHS:-40}" --steps-per-epoch "${FT_STEPS:-40}" --lr 5e-4 ;;
  multimodal) $LLMCTV train "${common[@]}" --out "$WORK/multimodal" --text-encoder smollm2 ;;
  vision)     $LLMCTV train "${common[@]}" --out "$WORK/vision" --vision-only ;;
  none)       $LLMCTV train "${common[@]}" --out "$WORK/tuning-none" --text-encoder smollm2 --tuning none ;;
esac
