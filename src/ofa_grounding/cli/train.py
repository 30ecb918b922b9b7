"""`ofa-ground train` and `ofa-ground distill`: OFA's RefCOCO finetuning and OFA-Compress's distillation, which
share the training arguments (the defaults differ)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from .common import EXIT_OK, UsageError
from .loading import run_training

# (epochs, batch size, lr, min lr, warmup ratio): OFA's RefCOCO finetuning, OFA-Compress's distillation
TRAIN_DEFAULTS = {"epochs": 10, "batch_size": 16, "lr": 5e-5, "min_lr": 0.0, "warmup_ratio": 0.06}
DISTILL_DEFAULTS = {"epochs": 5, "batch_size": 8, "lr": 1e-4, "min_lr": 1e-7, "warmup_ratio": 0.01}


def training_arguments(t: argparse.ArgumentParser, defaults: dict[str, Any]) -> None:
    t.add_argument("--data", required=True, help="training data (any format `eval` reads)")
    t.add_argument("--split", default="train", help="training split (default train; 'all' for every row)")
    t.add_argument("--val", help="validation data (default: none)")
    t.add_argument("--val-split", default="val")
    t.add_argument("--val-limit", type=int, help="validate on the first N samples only")
    t.add_argument("--out", required=True, help="output folder: last/ and best/ model directories, log.csv")
    t.add_argument("--epochs", type=int, default=defaults["epochs"])
    t.add_argument("--max-steps", type=int, help="stop after this many updates (overrides --epochs)")
    t.add_argument("--max-minutes", type=float, help="also stop (saving last/) after this much wall time; the "
                   "learning-rate schedule still follows --epochs/--max-steps")
    t.add_argument("--stop-at-step", type=int, metavar="N", help="stop (saving last/) after update N; the "
                   "learning-rate schedule still follows --epochs/--max-steps (a long schedule, cut short)")
    t.add_argument("--image-size", type=int, help="train at this image side (patch and max image size; default: "
                   "the model's)")
    t.add_argument("--batch-size", type=int, default=defaults["batch_size"], help="samples per process per micro-batch")
    t.add_argument("--accum", type=int, default=1, help="micro-batches per update (gradient accumulation)")
    t.add_argument("--group-by-image", type=int, default=1, metavar="K",
                   help="ours, off by default (1): batches of images with up to K of each image's samples, "
                        "which share one backbone pass (--batch-size counts samples and must be a multiple of K)")
    t.add_argument("--lr", type=float, default=defaults["lr"])
    t.add_argument("--min-lr", type=float, default=defaults["min_lr"])
    t.add_argument("--warmup-ratio", type=float, default=defaults["warmup_ratio"])
    t.add_argument("--weight-decay", type=float, default=0.01)
    t.add_argument("--label-smoothing", type=float, default=0.1)
    t.add_argument("--clip-norm", type=float, default=1.0)
    t.add_argument("--bin-sigma", type=float, default=0.0, help="ours, off by default (0): spread each "
                   "coordinate target as a Gaussian of this many bins, so near misses earn credit")
    t.add_argument("--attr-weight", type=float, default=0.0, help="ours, off by default (0): weight of a "
                   "training-only head that names each image cell's object (colour, shape, size) from the image "
                   "tokens; needs data that lists every object (make-synthetic's)")
    t.add_argument("--pointer-weight", type=float, default=0.0, help="ours, off by default (0): weight of a "
                   "training-only head that finds the described object's cells in the encoder's output; same data")
    t.add_argument("--absent-rate", type=float, default=0.0, metavar="P", help="ours, off by default (0): this "
                   "share of samples get a description of an object their image lacks and the null box as target, "
                   "which the model then answers for absent objects ('not found'); needs make-synthetic's data")
    t.add_argument("--smooth-bins", action="store_true", help="ours: a preset's fresh bin embeddings start as a "
                   "smooth function of the bin index")
    t.add_argument("--drop-path", type=float, help="encoder/decoder drop-path rate (default: the model's)")
    t.add_argument("--dropout", type=float, help="dropout (default: the model's)")
    t.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    t.add_argument("--augment", default="", help="comma-separated, off by default: flip (mirrors left/right "
                   "words too), jitter (brightness/contrast)")
    t.add_argument("--eval-every", type=int, default=500)
    t.add_argument("--save-every", type=int, default=500)
    t.add_argument("--seed", type=int, default=1)
    t.add_argument("--workers", type=int, default=0, help="data-loading processes")
    t.add_argument("--cache-images", action="store_true", help="keep resized training images in memory")
    t.add_argument("--device", default=None)
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    t.add_argument("--overwrite", action="store_true", help="start afresh in an --out that already holds a run "
                   "(without it, or --resume, such an --out is refused)")
    t.add_argument("--modelscope", action="store_true", help="also write pytorch_model.bin with every OFA key")
    t.add_argument("--no-progress", action="store_true")
    t.add_argument("--kill-at-step", type=int, help=argparse.SUPPRESS)  # tests: SIGKILL after that step
    t.add_argument("-v", "--verbose", action="store_true")


def add_parser(sub: Any) -> None:
    t = sub.add_parser("train", help="finetune (or train from a preset) on grounding data",
                       description="OFA's RefCOCO finetuning recipe. Multi-process: torchrun --nproc_per_node N "
                                   "-m ofa_grounding.cli train ... (DDP; gloo on CPU, nccl on GPU).")
    t.add_argument("--model", required=True, help="initial model directory, or a preset name for random weights")
    training_arguments(t, TRAIN_DEFAULTS)
    t.set_defaults(func=run)

    d = sub.add_parser("distill", help="train a student with a teacher's help (OFA-Compress's distillation)",
                       description="OFA-Compress's task-specific distillation for grounding: the task loss plus a "
                                   "soft-label loss on the teacher's distribution over the bins and attention-map "
                                   "matching between mapped layers. Everything else as `train` (resume, torchrun, "
                                   "bf16, validation, logs). Defaults: OFA-Compress's RefCOCO settings.")
    d.add_argument("--teacher", required=True, help="teacher model directory")
    d.add_argument("--student", required=True, dest="model",
                   help="student: a model directory, or a preset name for random weights")
    training_arguments(d, DISTILL_DEFAULTS)
    d.add_argument("--kd-weight", type=float, default=10000 / 59457,  # = train.losses.OFA_COMPRESS_KD_WEIGHT
                   help="weight of the per-token soft cross-entropy (default 10000/59457, OFA-Compress's 10000 on its "
                        "vocabulary-mean loss)")
    d.add_argument("--temperature", type=float, default=1.0)
    d.add_argument("--attn-weight", type=float, default=1.0, help="weight of the attention-map MSE (0: off)")
    d.add_argument("--layer-map", choices=("first", "uniform"), default="first",
                   help="student layer i <-> teacher layer i (first, OFA-Compress) or spread over the teacher's "
                        "depth (uniform)")
    d.add_argument("--attn-heads", choices=("sum", "mean"), default="sum",
                   help="sum (OFA-Compress) or average attention maps over heads before comparing")
    d.add_argument("--hidden-weight", type=float, default=0.0,
                   help="ours, off by default (0; OFA-Compress matches no hidden states): weight of the MSE between "
                        "mapped layers' outputs, through a learned projection where the widths differ")
    d.add_argument("--teacher-cache", metavar="FILE",
                   help="ours: compute the teacher's soft labels for every training sample (and its mirror with "
                        "--augment flip) once, into FILE (safetensors, float16), and read them from there instead "
                        "of running the teacher at every step; reused by later runs with the same teacher and data "
                        "(needs --attn-weight 0 --hidden-weight 0, no jitter)")
    d.add_argument("--teacher-bf16", action="store_true", help="run the teacher under bfloat16 autocast")
    d.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..train.distill import DistillConfig
    from ..train.loop import TrainConfig

    if args.resume and not (Path(args.out) / "last" / "trainer_state.json").is_file():  # before any loading
        raise UsageError(f"--resume: no checkpoint in {args.out}/last")
    cfg = TrainConfig(model=args.model, data=args.data, out=args.out, split=None if args.split == "all" else args.split,
                      val=args.val, val_split=args.val_split, val_limit=args.val_limit, epochs=args.epochs,
                      max_steps=args.max_steps, batch_size=args.batch_size, accum=args.accum, lr=args.lr,
                      group_by_image=args.group_by_image,
                      min_lr=args.min_lr, warmup_ratio=args.warmup_ratio, weight_decay=args.weight_decay,
                      label_smoothing=args.label_smoothing, clip_norm=args.clip_norm, bin_sigma=args.bin_sigma,
                      attr_weight=args.attr_weight, pointer_weight=args.pointer_weight, smooth_bins=args.smooth_bins,
                      absent_rate=args.absent_rate,
                      drop_path=args.drop_path,
                      dropout=args.dropout, bf16=args.bf16, augment=[a for a in args.augment.split(",") if a],
                      eval_every=args.eval_every, save_every=args.save_every, seed=args.seed, workers=args.workers,
                      cache_images=args.cache_images, device=args.device, resume=args.resume,
                      overwrite=args.overwrite,
                      modelscope=args.modelscope, progress=not args.no_progress, kill_at_step=args.kill_at_step,
                      image_size=args.image_size, max_minutes=args.max_minutes,
                      stop_at_step=args.stop_at_step)
    if args.command == "distill":
        cfg.distill = DistillConfig(teacher=args.teacher, kd_weight=args.kd_weight, temperature=args.temperature,
                                    attn_weight=args.attn_weight, layer_map=args.layer_map,
                                    attn_heads=args.attn_heads, teacher_bf16=args.teacher_bf16,
                                    hidden_weight=args.hidden_weight, teacher_cache=args.teacher_cache)
    summary = run_training(cfg)
    if summary is not None and int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary))
    return EXIT_OK
