#!/usr/bin/env bash
# Issue 7's experiment: does OFA-Compress's distillation beat plain finetuning for the demo-sized student?
# For each seed, the `demo` preset is trained from random weights twice with the same data, steps, batch,
# learning rate and seed: (a) `train` alone, (b) `distill` from TEACHER. The last checkpoint of each run is
# scored on the synthetic test split (no selection on test; no validation either, so both arms are treated
# alike). Results are appended to OUT/results.tsv: arm, seed, Acc@0.5, Acc@0.75, mIoU.
#   bash scripts/distill_experiment.sh TEACHER_DIR [OUT]
# Environment: BENCH (synthetic benchmark folder, made if missing), STEPS (default 2500), SEEDS ("1 2 3").
set -euo pipefail
TEACHER=${1:?usage: distill_experiment.sh TEACHER_DIR [OUT]}
OUT=${2:-runs/distill-experiment}
BENCH=${BENCH:-data/synthetic-40k}
OFA=${OFA:-ofa-ground}
STEPS=${STEPS:-2500}
SEEDS=${SEEDS:-1 2 3}
mkdir -p "$OUT"
[ -f "$BENCH/test.jsonl" ] || "$OFA" make-synthetic "$BENCH" --n 40000 --seed 0
# run B's recipe (scripts/train_demo.sh) on a shorter schedule, shared by both arms; the schedule is
# spelled out because `train` and `distill` default to different warmups and final learning rates
COMMON=(--data "$BENCH" --max-steps "$STEPS" --batch-size 32 --lr 7e-4 --warmup-ratio 0.06 --min-lr 0 --bf16
        --dropout 0 --augment flip --cache-images --bin-sigma 12 --save-every 500 --no-progress)

score() {  # arm seed model_dir
  "$OFA" eval --model "$3" --data "$BENCH" --split test --json --no-progress > "$OUT/$1-s$2.eval.json"
  python3 - "$1" "$2" "$OUT/$1-s$2.eval.json" >> "$OUT/results.tsv" <<'EOF'
import json, sys
arm, seed, path = sys.argv[1:]
test = json.load(open(path))["splits"]["test"]
print(f"{arm}\t{seed}\t{test['acc50']:.4f}\t{test['acc75']:.4f}\t{test['miou']:.4f}")
EOF
}

grep -q '^teacher' "$OUT/results.tsv" 2>/dev/null || score teacher - "$TEACHER"
for seed in $SEEDS; do
  "$OFA" train --model demo "${COMMON[@]}" --seed "$seed" --out "$OUT/finetuned-s$seed" $([ -d "$OUT/finetuned-s$seed/last" ] && echo --resume)
  grep -q "^finetuned	$seed	" "$OUT/results.tsv" || score finetuned "$seed" "$OUT/finetuned-s$seed/last"
  "$OFA" distill --teacher "$TEACHER" --student demo --teacher-bf16 "${COMMON[@]}" --seed "$seed" \
    --out "$OUT/distilled-s$seed" $([ -d "$OUT/distilled-s$seed/last" ] && echo --resume)
  grep -q "^distilled	$seed	" "$OUT/results.tsv" || score distilled "$seed" "$OUT/distilled-s$seed/last"
done
cat "$OUT/results.tsv"
