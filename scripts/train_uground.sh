#!/usr/bin/env bash
# The shipped models/uground_shapes, stage by stage: bash scripts/train_uground.sh [OUT]
# (2 CPU threads; about 65 minutes with the stills, 0.4 s a step). Each stage starts from the one before
# (--init-uground), so every stage's record in OUT/groundloop_uground.json names its parent.
#   0. grounded-picking stills, once: 700 train seeds and 200 held-out seeds, 3 stills each (~12 min)
#   1. the paper's losses, last layer only, from the shapes VLM: [SEG]/[REJ] and a foreground map
#   2. + the pointing loss (not in the paper), still the last layer: the map starts to tell shapes apart
#   3. + the picking stills (40 % of each batch), then the layer policy (mode 3) from 30 % of the budget
# The shipped model came from these stages, except that stages 1 and 2 were cut by hand at steps 1500 and
# 750 of longer budgets (9000 and 4000 steps), so their learning rates had barely begun to decay; here
# each stage's cosine runs to its end. Stage 1 started from the shapes VLM shipped then (git df0d73c:
# models/vlm_shapes); the one shipped now was fine-tuned further for video QA (scripts/train_vlm_shapes.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${1:-models/uground_shapes}
RUNS=runs/uground_recipe
STILLS=data/grounded_stills
PY=.venv/bin/python
TRAIN=("$PY" -m nodes.uground.train uground --threads 2 --half-weights --no-progress)

[ -f "$STILLS/train/index.json" ] || "$PY" -m sim.cli grounded-stills --out "$STILLS/train" -n 700 --split train
[ -f "$STILLS/heldout/index.json" ] || "$PY" -m sim.cli grounded-stills --out "$STILLS/heldout" -n 200 --split heldout

"${TRAIN[@]}" --out "$RUNS/1_paper" --init-vlm models/vlm_shapes --vlm-lr 3e-4 --pointing-weight 0 \
  --last-layer-share 1 --steps 1500 --eval-every 500
"${TRAIN[@]}" --out "$RUNS/2_pointing" --init-uground "$RUNS/1_paper" --vlm-lr 3e-4 --pointing-weight 1 \
  --last-layer-share 1 --steps 750 --eval-every 250
"${TRAIN[@]}" --out "$OUT" --ckpt-dir "$RUNS/3_stills" --init-uground "$RUNS/2_pointing" --vlm-lr 3e-4 \
  --stills "$STILLS/train" --stills-share 0.4 --stills-eval "$STILLS/heldout" --last-layer-share 0.3 \
  --steps 5000 --eval-every 500
