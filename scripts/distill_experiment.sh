#!/usr/bin/env bash
# Does OFA-Compress's distillation beat plain finetuning for a small student? (issue 30; docs/distillation.md)
# For each seed the STUDENT preset is trained twice from the same initialisation (the preset's fresh weights drawn
# with that seed, its backbone copied from the teacher's with --backbone-from), with the same data, steps, batch,
# schedule and seed: once with `train` (labels only), once with `distill` (OFA-Compress's task-specific recipe at
# the distiller's defaults: soft labels, encoder and decoder attention maps). The two arms of a seed run at the
# same time, one thread each. The last checkpoint of each run is scored (no selection on any split) on the test
# split of BENCH and on UNSEEN (a benchmark of a seed never trained or tuned on), with the teacher alongside;
# every score is a line of OUT/results.tsv: model, seed, steps done, data, Acc@0.5, Acc@0.75, mIoU.
#   bash scripts/distill_experiment.sh TEACHER [OUT]
# TEACHER: a model name (`demo`, the bundled model, by default) or directory; its backbone must be the student's.
# Its image side must be the student's too (128 px for `mini`): the bundled `demo` has trained at larger sides since
# 2026-12-05, so pass the 128-px teacher of docs/distillation.md (git archive 5588783 src/ofa_grounding/models/demo).
# Environment (defaults in brackets):
#   BENCH [data/v1-bench]  training data and test split: make-synthetic --world v1 --n 40000 --seed 0, made if missing
#   UNSEEN [data/v1-unseen-seed-7]  make-synthetic --world v1 --n 8000 --seed 7, made if missing
#   STUDENT [mini]  STEPS [2000]  BATCH [32]  LR [1e-3]  SEEDS ["1 2 3"]  DEVICE [cpu]
#   EXTRA  more options for the distilled arm only (e.g. "--kd-weight 1 --temperature 2")
# A run that was cut off resumes from its last/ when the script is run again; scored runs are skipped.
set -euo pipefail
TEACHER=${1:-demo}
OUT=${2:-runs/distill-experiment}
BENCH=${BENCH:-data/v1-bench}
UNSEEN=${UNSEEN:-data/v1-unseen-seed-7}
OFA=${OFA:-ofa-ground}
STUDENT=${STUDENT:-mini}
STEPS=${STEPS:-2000}
SEEDS=${SEEDS:-1 2 3}
DEVICE=${DEVICE:-cpu}
mkdir -p "$OUT"
[ -f "$BENCH/test.jsonl" ] || "$OFA" make-synthetic "$BENCH" --world v1 --n 40000 --seed 0
[ -f "$UNSEEN/test.jsonl" ] || "$OFA" make-synthetic "$UNSEEN" --world v1 --n 8000 --seed 7
source "$(dirname "$0")/distill_recipe.sh"  # RECIPE: what both arms share
distill_recipe "$BENCH" "$STEPS" "$TEACHER" 1 "$DEVICE" 500

score() {  # name seed model_dir: one results.tsv line per benchmark
  local data
  for data in "$BENCH" "$UNSEEN"; do
    "$OFA" eval --model "$3" --data "$data" --split test --json --no-progress --device "$DEVICE" --threads 1 \
      > "$OUT/$1-s$2-$(basename "$data").eval.json"
    python3 - "$1" "$2" "$OUT/$1-s$2-$(basename "$data").eval.json" "$3" "$(basename "$data")" \
      >> "$OUT/results.tsv" <<'EOF'
import json, pathlib, sys
name, seed, path, model, data = sys.argv[1:]
test = json.load(open(path))["splits"]["test"]
state = pathlib.Path(model) / "trainer_state.json"
steps = json.loads(state.read_text())["step"] if state.is_file() else "-"
print(f"{name}\t{seed}\t{steps}\t{data}\t{test['acc50']:.4f}\t{test['acc75']:.4f}\t{test['miou']:.4f}")
EOF
  done
}

grep -q '^teacher' "$OUT/results.tsv" 2>/dev/null || score teacher - "$TEACHER"
for seed in $SEEDS; do
  pids=()
  for arm in finetuned distilled; do
    grep -q "^$arm	$seed	" "$OUT/results.tsv" 2>/dev/null && continue
    run=("$OFA" train --model "preset:$STUDENT")
    [ "$arm" = distilled ] && run=("$OFA" distill --teacher "$TEACHER" --student "preset:$STUDENT" ${EXTRA:-})
    resume=(); [ -d "$OUT/$arm-s$seed/last" ] && resume=(--resume)
    OMP_NUM_THREADS=1 "${run[@]}" "${RECIPE[@]}" --seed "$seed" --out "$OUT/$arm-s$seed" "${resume[@]}" \
      > "$OUT/$arm-s$seed.log" 2>&1 & pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || echo "seed $seed: a run failed (see its log in $OUT)" >&2; done
  for arm in finetuned distilled; do
    grep -q "^$arm	$seed	" "$OUT/results.tsv" 2>/dev/null || [ ! -d "$OUT/$arm-s$seed/last" ] ||
      score "$arm" "$seed" "$OUT/$arm-s$seed/last"
  done
done
column -t "$OUT/results.tsv"
