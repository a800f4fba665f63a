#!/usr/bin/env bash
# Reproduces the shipped CPU demo models (multimodal + vision-only) from synthetic phantoms.
# Usage: scripts/train_demo_model.sh [WORK_DIR [multimodal|multimodal-cf|finetune-cf|structures|structures-dr|vision|none]]
#        (default out/demo-model multimodal). multimodal-cf trains on the same 48 cases plus their
#        counterfactual notes (laterality flip, N switch: same CT, recomputed target).
#        finetune-cf continues from multimodal-cf's best checkpoint (a new schedule) with half of
#        the batches pairing two notes of one CT (the single-CTV model of earlier versions).
#        structures fine-tunes into the five sub-volumes (breast, chest wall, axilla, SCF, IMN)
#        on sites A, R (robustness: couch, arms, 1.5-5 mm slices, 0.6-1.4 mm pixels) and RB
#        (bilateral, per-side N switches), warm-started from INIT (default checkpoints/demo);
#        RESUME=1 continues WORK/structures from its last epoch. The shipped checkpoints/demo
#        came from INIT=checkpoints/training/structures-rb with NOTE_AUG=0.5 (same-target note
#        rewrites: N/T stage redrawn, bilateral clauses reordered), OVERSAMPLE='^RB-=3' (the
#        bilateral per-side cases three times as often), PAIR_FRACTION=0.6, FT_LR=2e-4
#        (README: the stages and their wall times).
#        structures-dr is the image-safety stage (issue 22): the structures data plus 40
#        domain-randomised site-D phantoms (liver dome, spleen, stomach gas, small to large
#        breasts, more abdomen), with MONAI geometry/intensity augmentation and the text-aware
#        mirror (AUGMENT, default below), warm-started from INIT (default checkpoints/demo).
#        DR_PART (default s-D), DR_SEED (601) and DR_CASES (40) name its phantoms, DR_DATA
#        (structures-data-dr) the combined data folder, DR_OUT (structures-dr) the run. An
#        existing DR_PART folder is reused as it is (phantoms of an older generator included):
#        name a new DR_PART after changing the generator (s-D5 and later: 70 % of site-D
#        patients have their breasts drawn alike, docs/training.md).
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
structure_data() {
  local d="$WORK/${DATA_NAME:-structures-data}"
  [ -f "$d/clinical.csv" ] && return
  [ -f "$WORK/s-A/clinical.csv" ] || $LLMCTV phantoms --out "$WORK/s-A" --cases 40 --site A --seed 201 --scale 0.25 --counterfactuals
  [ -f "$WORK/s-R/clinical.csv" ] || $LLMCTV phantoms --out "$WORK/s-R" --cases 40 --site R --seed 301 --scale 0.25 --counterfactuals
  [ -f "$WORK/s-R2/clinical.csv" ] || $LLMCTV phantoms --out "$WORK/s-R2" --cases 12 --site R --seed 401 --scale 0.5 --counterfactuals
  [ -f "$WORK/s-RB/clinical.csv" ] || $LLMCTV phantoms --out "$WORK/s-RB" --cases 30 --site RB --seed 501 --scale 0.25 --counterfactuals
  mkdir -p "$d.tmp"; head -1 "$WORK/s-A/clinical.csv" > "$d.tmp/clinical.csv"
  for part in s-A s-R s-R2 s-RB ${EXTRA_PARTS:-}; do
    tail -n +2 "$WORK/$part/clinical.csv" | while IFS= read -r line; do
      id=${line%%,*}; ln -sfn "../$part/$id" "$d.tmp/$part-$id"; echo "$part-$id,${line#*,}" >> "$d.tmp/clinical.csv"
    done
  done
  mv "$d.tmp" "$d"
}
case "${2:-multimodal}" in
  structures-dr)
    dr=${DR_PART:-s-D}
    [ -f "$WORK/$dr/clinical.csv" ] || $LLMCTV phantoms --out "$WORK/$dr" --cases "${DR_CASES:-40}" --site D --seed "${DR_SEED:-601}" --scale 0.25 --counterfactuals
    DATA_NAME=${DR_DATA:-structures-data-dr} EXTRA_PARTS=$dr structure_data
    # shellcheck disable=SC2086
    $LLMCTV train "${common[@]}" --data "$WORK/${DR_DATA:-structures-data-dr}" --out "$WORK/${DR_OUT:-structures-dr}" \
      --structure phantom --text-encoder smollm2 --init-from "${INIT:-checkpoints/demo}" \
      --pair-fraction "${PAIR_FRACTION:-0.5}" --epochs "${FT_EPOCHS:-30}" \
      --steps-per-epoch "${FT_STEPS:-40}" --lr "${FT_LR:-2e-4}" --val-fraction 0.1 \
      --note-augment "${NOTE_AUG:-0.5}" ${OVERSAMPLE:+--oversample "$OVERSAMPLE"} \
      ${AUGMENT:---augment-geometry 0.3 --augment-elastic 0.05 --augment-intensity 0.3 --mirror 0.3} \
      ${RESUME:+--resume} ;;
  structures) structure_data
    $LLMCTV train "${common[@]}" --data "$WORK/structures-data" --out "$WORK/structures" \
      --structure phantom --text-encoder smollm2 --init-from "${INIT:-checkpoints/demo}" \
      --pair-fraction "${PAIR_FRACTION:-0.5}" --epochs "${FT_EPOCHS:-30}" \
      --steps-per-epoch "${FT_STEPS:-40}" --lr "${FT_LR:-3e-4}" --val-fraction 0.1 \
      --note-augment "${NOTE_AUG:-0}" ${OVERSAMPLE:+--oversample "$OVERSAMPLE"} ${RESUME:+--resume} ;;
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
