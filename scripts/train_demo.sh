#!/usr/bin/env bash
# Reproduce the demo model shipped in src/ofa_grounding/models/demo: about 50 minutes on 2 CPU cores.
#   bash scripts/train_demo.sh [OUT]      (needs the package installed: see the README's first command)
# 1. The synthetic benchmark (40,000 samples, seed 0): its val split validates, its test split scores.
# 2. Training data from the same generator and seed with more expressions per scene: `--per-scene 4`
#    keeps every benchmark expression and adds more for the same scenes, `--simple 3` adds up to 3 easy
#    expressions ("the blue star") per train scene, and 40,000 scenes instead of 20,000. Scenes keep the
#    split they have in the benchmark, and only its train split is used, so no val/test scene is seen.
# 3. Training the `demo` preset from scratch, validating on 300 benchmark val samples every 1000 steps;
#    batches of 8 images x 4 expressions (--group-by-image 4: one backbone pass per image).
# 4. Acc@0.5 of the best checkpoint on the benchmark's test split.
set -euo pipefail
OUT=${1:-runs/demo}
BENCH=${BENCH:-data/synthetic-40k}
TRAIN=${TRAIN:-data/synthetic-train}
OFA=${OFA:-ofa-ground}
[ -f "$BENCH/test.jsonl" ] || "$OFA" make-synthetic "$BENCH" --n 40000 --seed 0
[ -f "$TRAIN/train.jsonl" ] || "$OFA" make-synthetic "$TRAIN" --n 150000 --seed 0 --per-scene 4 --simple 3
"$OFA" train --model demo --data "$TRAIN" --val "$BENCH" --val-split val --val-limit 300 --out "$OUT" \
  --max-steps 12000 --batch-size 32 --group-by-image 4 --lr 7e-4 --bf16 --dropout 0 --augment flip --cache-images \
  --bin-sigma 12 --eval-every 1000 --save-every 1000 --seed 1
"$OFA" eval --model "$OUT/best" --data "$BENCH" --split test
