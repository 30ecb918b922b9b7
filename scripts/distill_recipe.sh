# The training options both arms of the distillation experiment share (scripts/distill_experiment.sh) and its
# pilots reuse (scripts/distill_pilots.sh): the demo model's stage-1 recipe (scripts/train_demo.sh), its schedule
# spelled out because `train` and `distill` default to different warmups and final learning rates. Sourced.
# distill_recipe DATA STEPS TEACHER THREADS DEVICE SAVE_EVERY: sets the array RECIPE (BATCH and LR from the
# environment, default 32 and 1e-3).
distill_recipe() {
  RECIPE=(--data "$1" --max-steps "$2" --batch-size "${BATCH:-32}" --lr "${LR:-1e-3}" --warmup-ratio 0.02
          --min-lr 0 --dropout 0 --augment flip --cache-images --bin-sigma 12 --attr-weight 1 --pointer-weight 1
          --smooth-bins --absent-rate 0.1 --backbone-from "$3" --save-every "$6" --eval-every 100000
          --threads "$4" --device "$5" --no-progress)
}
