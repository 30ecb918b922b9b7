#!/usr/bin/env bash
# Reproduce the demo model shipped in src/ofa_grounding/models/demo: about an hour on 2 CPU cores.
#   bash scripts/train_demo.sh [OUT]      (needs the package installed: see the README's first command)
# Steps: the synthetic benchmark (40,000 samples, seed 0), training the `demo` preset from scratch on its
# train split with validation on 500 val samples every 1000 steps, then Acc@0.5 on its test split.
set -euo pipefail
OUT=${1:-runs/demo}
DATA=${DATA:-data/synthetic-40k}
OFA=${OFA:-ofa-ground}
[ -f "$DATA/test.jsonl" ] || "$OFA" make-synthetic "$DATA" --n 40000 --seed 0
"$OFA" train --model demo --data "$DATA" --val "$DATA" --val-limit 300 --out "$OUT" \
  --max-steps 16000 --batch-size 32 --lr 7e-4 --bf16 --dropout 0 --augment flip --cache-images \
  --eval-every 1000 --save-every 1000 --seed 1
"$OFA" eval --model "$OUT/best" --data "$DATA" --split test
