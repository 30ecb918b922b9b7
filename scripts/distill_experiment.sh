#!/usr/bin/env bash
# Issue 7's experiment: does OFA-Compress's distillation beat plain finetuning for the demo-sized student?
# For each seed, the `demo` preset is trained from random weights twice with the same data, steps, batch,
# learning rate and seed: (a) `train` alone, (b) `distill` from TEACHER. The last checkpoint of each run is
# scored on the synthetic test split (no selection on test; no validation either, so both arms are treated
# alike). Results are appended to OUT/results.tsv: arm, seed, steps done, Acc@0.5, Acc@0.75, mIoU.
#   bash scripts/distill_experiment.sh TEACHER [OUT]
# TEACHER is a model directory; if it does not exist and TEACHER_PRESET is set, a teacher of that preset is
# trained there first on the same train split (TEACHER_STEPS updates of TEACHER_BATCH at TEACHER_LR).
# Environment (defaults in brackets):
#   BENCH [data/synthetic-40k]  synthetic benchmark folder, made if missing (40,000 samples, seed 0)
#   STEPS [2500]  SEEDS ["1 2 3"]  IMAGE_SIZE [128: the demo preset's]
#   DEVICE [cpu]  WORKERS [0] data-loading processes per run
#   PARALLEL [0]  1: the seeds of an arm run at the same time (a GPU has room for several small runs), and
#                 the finetuned arm runs while the teacher trains
#   STOP_AT       optional: stop both arms after this update, on the learning-rate schedule of STEPS (e.g.
#                 STEPS=16000 STOP_AT=5000: run B's schedule, cut short; results.tsv reports the steps done)
#   MAX_MINUTES   optional wall-time guard per run (a run stopped by it reports fewer steps in results.tsv)
# The GPU attempt in docs/experiments/2026-11-distillation.md (one H200) ran: DEVICE=cuda WORKERS=2 PARALLEL=1 STEPS=5000 TEACHER_PRESET=tiny ...
set -euo pipefail
TEACHER=${1:?usage: distill_experiment.sh TEACHER [OUT]}
OUT=${2:-runs/distill-experiment}
BENCH=${BENCH:-data/synthetic-40k}
OFA=${OFA:-ofa-ground}
STEPS=${STEPS:-2500}
SEEDS=${SEEDS:-1 2 3}
DEVICE=${DEVICE:-cpu}
WORKERS=${WORKERS:-0}
PARALLEL=${PARALLEL:-0}
IMAGE_SIZE=${IMAGE_SIZE:-128}
GUARD=(); [ -n "${MAX_MINUTES:-}" ] && GUARD=(--max-minutes "$MAX_MINUTES")
STOP=(); [ -n "${STOP_AT:-}" ] && STOP=(--stop-at-step "$STOP_AT")
mkdir -p "$OUT"
[ -f "$BENCH/test.jsonl" ] || "$OFA" make-synthetic "$BENCH" --world v1 --n 40000 --seed 0 --workers "${SYN_WORKERS:-1}"
# run B's recipe (scripts/train_demo.sh) on a shorter schedule, shared by both arms; the schedule is
# spelled out because `train` and `distill` default to different warmups and final learning rates
RECIPE=(--data "$BENCH" --lr 7e-4 --warmup-ratio 0.06 --min-lr 0 --bf16 --dropout 0 --augment flip --cache-images
        --bin-sigma 12 --no-progress --device "$DEVICE" --workers "$WORKERS" --image-size "$IMAGE_SIZE" "${GUARD[@]}")
COMMON=("${RECIPE[@]}" --max-steps "$STEPS" "${STOP[@]}" --batch-size 32 --save-every 500)

score() {  # arm seed model_dir
  "$OFA" eval --model "$3" --data "$BENCH" --split test --json --no-progress --device "$DEVICE" \
    > "$OUT/$1-s$2.eval.json"
  python3 - "$1" "$2" "$OUT/$1-s$2.eval.json" "$3" >> "$OUT/results.tsv" <<'EOF'
import json, pathlib, sys
arm, seed, path, model = sys.argv[1:]
test = json.load(open(path))["splits"]["test"]
state = pathlib.Path(model) / "trainer_state.json"
steps = json.loads(state.read_text())["step"] if state.is_file() else "-"
print(f"{arm}\t{seed}\t{steps}\t{test['acc50']:.4f}\t{test['acc75']:.4f}\t{test['miou']:.4f}")
EOF
}

run_arm() {  # arm: train every seed (at once with PARALLEL=1), then score each
  local arm=$1 pids=() seed
  for seed in $SEEDS; do
    grep -q "^$arm	$seed	" "$OUT/results.tsv" 2>/dev/null && continue
    local resume=(); [ -d "$OUT/$arm-s$seed/last" ] && resume=(--resume)
    if [ "$arm" = finetuned ]; then
      cmd=("$OFA" train --model preset:demo)
    else
      cmd=("$OFA" distill --teacher "$TEACHER" --student preset:demo --teacher-bf16)
    fi
    if [ "$PARALLEL" = 1 ]; then
      "${cmd[@]}" "${COMMON[@]}" --seed "$seed" --out "$OUT/$arm-s$seed" "${resume[@]}" \
        > "$OUT/$arm-s$seed.log" 2>&1 & pids+=($!)
    else
      "${cmd[@]}" "${COMMON[@]}" --seed "$seed" --out "$OUT/$arm-s$seed" "${resume[@]}"
    fi
  done
  for pid in "${pids[@]}"; do wait "$pid" || echo "$arm: a run failed (see its log in $OUT)" >&2; done
  for seed in $SEEDS; do
    grep -q "^$arm	$seed	" "$OUT/results.tsv" 2>/dev/null || [ ! -d "$OUT/$arm-s$seed/last" ] ||
      score "$arm" "$seed" "$OUT/$arm-s$seed/last"
  done
}

finetuned_pid=
if [ ! -d "$TEACHER" ]; then
  [ -n "${TEACHER_PRESET:-}" ] || { echo "no teacher at $TEACHER (set TEACHER_PRESET to train one)" >&2; exit 2; }
  if [ "$PARALLEL" = 1 ]; then run_arm finetuned > "$OUT/finetuned-arm.log" 2>&1 & finetuned_pid=$!; fi
  "$OFA" train --model "preset:$TEACHER_PRESET" "${RECIPE[@]}" --max-steps "${TEACHER_STEPS:-10000}" \
    --batch-size "${TEACHER_BATCH:-64}" --lr "${TEACHER_LR:-5e-4}" --save-every 1000 --seed 0 --out "$OUT/teacher-run"
  cp -r "$OUT/teacher-run/last" "$TEACHER"
fi
grep -q '^teacher' "$OUT/results.tsv" 2>/dev/null || score teacher - "$TEACHER"
[ -n "$finetuned_pid" ] && wait "$finetuned_pid"
run_arm finetuned
run_arm distilled
cat "$OUT/results.tsv"
