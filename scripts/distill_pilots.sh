#!/usr/bin/env bash
# Pilots for the distillation experiment (issue 30; docs/distillation.md, "Pilots"): which of the distiller's loss
# settings helps a student most at equal samples seen? One seed, one run after another, each the recipe of
# scripts/distill_experiment.sh (the same student preset, initialisation, data, schedule and seed) for STEPS
# updates, scored on the val split (first VAL_LIMIT rows) of BENCH, never on a test split. Each pilot is a line of
# OUT/pilots.tsv: name, options, steps done, Acc@0.5, Acc@0.75, mIoU.
#   bash scripts/distill_pilots.sh TEACHER [OUT]
# TEACHER as for distill_experiment.sh: the student's backbone and image side (the 128-px teacher of
# docs/distillation.md; the bundled `demo` is 224 px and `distill` refuses it with a 128-px student).
# Environment (defaults in brackets): BENCH [data/v1-bench]  STUDENT [mini]  STEPS [1000]  SEED [1]
#   VAL_LIMIT [1000]  DEVICE [cpu]  THREADS [1]  PILOTS: which to run, by name [all, in the order below]
# A pilot already in pilots.tsv is skipped; one that was cut off resumes from its last/.
set -euo pipefail
TEACHER=${1:-demo}
OUT=${2:-runs/distill-pilots}
BENCH=${BENCH:-data/v1-bench}
OFA=${OFA:-ofa-ground}
STEPS=${STEPS:-1000}
SEED=${SEED:-1}
THREADS=${THREADS:-1}
DEVICE=${DEVICE:-cpu}
mkdir -p "$OUT"
[ -f "$BENCH/val.jsonl" ] || "$OFA" make-synthetic "$BENCH" --world v1 --n 40000 --seed 0
source "$(dirname "$0")/distill_recipe.sh"
distill_recipe "$BENCH" "$STEPS" "$TEACHER" "$THREADS" "$DEVICE" 250
RECIPE+=(--seed "$SEED")
# name and the distiller's options; "finetuned" is `train` with the same recipe (labels only)
declare -A OPTIONS=(
  [finetuned]=""
  [defaults]=""
  [kd1]="--kd-weight 1"
  [t2]="--temperature 2"
  [no-attn]="--attn-weight 0"
  [uniform]="--layer-map uniform"
  [hidden]="--hidden-weight 1"
)
ORDER=(finetuned defaults kd1 no-attn t2 uniform hidden)
for name in ${PILOTS:-${ORDER[@]}}; do
  [ -n "${OPTIONS[$name]+x}" ] || { echo "unknown pilot: $name (known: ${ORDER[*]})" >&2; exit 2; }
  grep -q "^$name	" "$OUT/pilots.tsv" 2>/dev/null && continue
  if [ "$name" = finetuned ]; then run=("$OFA" train --model "preset:${STUDENT:-mini}")
  else run=("$OFA" distill --teacher "$TEACHER" --student "preset:${STUDENT:-mini}" ${OPTIONS[$name]}); fi
  resume=(); [ -d "$OUT/$name/last" ] && resume=(--resume)
  OMP_NUM_THREADS="$THREADS" "${run[@]}" "${RECIPE[@]}" --out "$OUT/$name" "${resume[@]}" > "$OUT/$name.log" 2>&1
  "$OFA" eval --model "$OUT/$name/last" --data "$BENCH" --split val --limit "${VAL_LIMIT:-1000}" --json --no-progress \
    --device "$DEVICE" --threads "$THREADS" > "$OUT/$name.eval.json"
  python3 - "$name" "${OPTIONS[$name]:--}" "$OUT/$name.eval.json" "$OUT/$name/last" >> "$OUT/pilots.tsv" <<'EOF'
import json, pathlib, sys
name, options, path, model = sys.argv[1:]
val = json.load(open(path))["splits"]["val"]
steps = json.loads((pathlib.Path(model) / "trainer_state.json").read_text())["step"]
print(f"{name}\t{options}\t{steps}\t{val['acc50']:.4f}\t{val['acc75']:.4f}\t{val['miou']:.4f}")
EOF
done
column -t -s $'\t' "$OUT/pilots.tsv"
