#!/usr/bin/env bash
# The shipped models/vlm_shapes, stage by stage: bash scripts/train_vlm_shapes.sh [OUT]
# (CPU; about 3 hours at the shipped run's 2.5-4.5 s a step). Each stage starts from the one before
# (--init), so every stage's record in OUT/groundloop_vlm.json names its parent.
#   1. from scratch on the shipped CLIP: captions first (LLaVA's alignment), then relevance on the A.I.R.
#      rubric, QA and captions
#   2. QA answered with the right option's text, on 1- and 5-minute scenes, 8 frames a question: the
#      model learns to read the evidence (the benchmark's oracle row)
#   3. relevance first again, so A.I.R.'s judgements (and its evidence recall) recover
#   4. QA and relevance together at a lower rate
# The shipped model's stage 1 ran on an H200 (3514 steps at batch 128 from scratch with letter targets,
# then 1368 steps with the frame's time in the relevance prompts); here stage 1 has 30 CPU minutes, so
# its result, and what the later stages start from, differ.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${1:-models/vlm_shapes}
RUNS=runs/vlm_recipe
TRAIN=(.venv/bin/groundloop train vlm --threads 2 --no-progress)
TASKS=(--align-share 0 --qa-target text --scene-seconds 60,300 --qa-frames 8)

"${TRAIN[@]}" --clip models/clip_shapes --out "$RUNS/1_base" --minutes 30
"${TRAIN[@]}" --init "$RUNS/1_base" --out "$RUNS/2_text_qa" "${TASKS[@]}" \
  --task-mix qa=0.6,relevance=0.25,caption=0.15 --lr 5e-4 --steps 980
"${TRAIN[@]}" --init "$RUNS/2_text_qa" --out "$RUNS/3_relevance" "${TASKS[@]}" \
  --task-mix relevance=0.6,qa=0.25,caption=0.15 --lr 3e-4 --steps 568
"${TRAIN[@]}" --init "$RUNS/3_relevance" --out "$OUT" --ckpt-dir "$RUNS/4_both" "${TASKS[@]}" \
  --task-mix qa=0.45,relevance=0.4,caption=0.15 --lr 2e-4 --steps 896
