"""The settings of a training and of distillation: one source of their defaults and help texts.

`ofa-ground train` / `distill` build their flags from these fields (cli/train.py): a field `foo_bar`
is `--foo-bar`, its `help` and other argparse details are in the field's metadata. Nothing here imports
torch, so that `ofa-ground --help` stays instant.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["DISTILL_RECIPE", "LAYER_MAPS", "OFA_COMPRESS_KD_WEIGHT", "DistillConfig", "TrainConfig"]

# OFA-Compress divides its soft-label loss by n_tokens x 59457 (the full vocabulary) and weights it
# 10000; per token that is this weight on the plain soft cross-entropy (ofa-training.md, b.3).
OFA_COMPRESS_KD_WEIGHT = 10000 / 59457

LAYER_MAPS = ("first", "uniform")


def _split(name: str) -> str | None:
    return None if name == "all" else name


def _comma_list(text: str) -> list[str]:
    return [a for a in text.split(",") if a]


def _opt(default: Any = None, help: str | None = None, **cli: Any) -> Any:
    """A field with its command-line details: help, and where needed metavar, type, choices, flag, cli=False."""
    return field(default=default, metadata={"help": help, **cli})


@dataclass
class TrainConfig:
    """A training run (`train.loop.train`); the defaults are OFA's RefCOCO finetuning recipe."""

    model: str = field(metadata={"cli": False})  # a model name (`model_names`), or preset:NAME for random weights
    data: str = field(metadata={"help": "training data (any format `eval` reads)"})
    split: str | None = _opt("train", "training split (default train; 'all' for every row)", type=_split)
    val: str | None = _opt(None, "validation data (default: none)")
    val_split: str | None = _opt("val", "the split of --val to validate on")
    val_limit: int | None = _opt(None, "validate on the first N samples only")
    out: str = field(default="", metadata={"help": "output folder: last/ and best/ model directories, log.csv",
                                           "required": True})
    epochs: int = _opt(10, "passes over the training data (the learning-rate schedule's length)")
    max_steps: int | None = _opt(None, "stop after this many updates (overrides --epochs)")
    max_minutes: float | None = _opt(None, "also stop (saving last/) after this much wall time; the learning-rate "
                                           "schedule still follows --epochs/--max-steps")
    stop_at_step: int | None = _opt(None, "stop (saving last/) after update N; the learning-rate schedule still "
                                          "follows --epochs/--max-steps (a long schedule, cut short)", metavar="N")
    image_size: int | None = _opt(None, "train at this image side (patch and max image size; default: the "
                                        "model's)")
    batch_size: int = _opt(16, "samples per process per micro-batch")
    accum: int = _opt(1, "micro-batches per update (gradient accumulation)")
    group_by_image: int = _opt(1, "ours, off by default (1): batches of images with up to K of each image's "
                                  "samples, which share one backbone pass (--batch-size counts samples and must be a "
                                  "multiple of K)", metavar="K")
    lr: float = _opt(5e-5, "peak learning rate (AdamW)")
    min_lr: float = _opt(0.0, "the learning rate the linear decay ends at")
    warmup_ratio: float = _opt(0.06, "share of the updates spent warming the learning rate up linearly")
    weight_decay: float = _opt(0.01, "AdamW weight decay")
    label_smoothing: float = _opt(0.1, "label smoothing of the token targets")
    clip_norm: float = _opt(1.0, "clip the gradients' global norm to this")
    bin_sigma: float = _opt(0.0, "ours, off by default (0): spread each coordinate target as a Gaussian of this "
                                 "many bins, so near misses earn credit")
    attr_weight: float = _opt(0.0, "ours, off by default (0): weight of a training-only head that names each image "
                                   "cell's object (colour, shape, size) from the image tokens; needs data that lists "
                                   "every object (make-synthetic's)")
    pointer_weight: float = _opt(0.0, "ours, off by default (0): weight of a training-only head that finds the "
                                      "described object's cells in the encoder's output; same data")
    absent_rate: float = _opt(0.0, "ours, off by default (0): this share of samples get a description of an object "
                                   "their image lacks and the null box as target, which the model then answers for "
                                   "absent objects ('not found'); needs make-synthetic's data", metavar="P")
    smooth_bins: bool = _opt(False, "ours: a preset's fresh bin embeddings start as a smooth function of the bin "
                                    "index")
    backbone_from: str | None = _opt(None, "ours: a preset's fresh ResNet backbone starts as this model's (same "
                                           "resnet type and width; its BatchNorm statistics too)", metavar="MODEL")
    heads_from: str | None = _opt(None, "ours: the training-only heads (--attr-weight, --pointer-weight) start as "
                                        "this earlier run's (its last/ directory, which keeps them), not afresh; "
                                        "for a new run that starts from that run's weights", metavar="RUN_LAST")
    drop_path: float | None = _opt(None, "encoder/decoder drop-path rate (default: the model's)")
    dropout: float | None = _opt(None, "dropout (default: the model's)")
    bf16: bool = _opt(False, "bfloat16 autocast")
    augment: list[str] = field(default_factory=list, metadata={
        "help": "comma-separated, off by default: flip (mirrors left/right words too), jitter (brightness/contrast)",
        "type": _comma_list})
    log_every: int = _opt(1, "write a log.csv row (means over the updates since the last), the progress bar's loss "
                             "and warnings of skipped updates every N updates: the host waits for the device only "
                             "then (on a GPU, try 50); 1 reads them at every update", metavar="N")
    eval_every: int = _opt(500, "validate (with --val) every N updates, and at the end", metavar="N")
    save_every: int = _opt(500, "write last/ every N updates, and at the end", metavar="N")
    seed: int = _opt(1, "seed of the shuffling, augmentation, dropout and fresh weights")
    workers: int = _opt(0, "data-loading processes")
    cache_images: bool = _opt(False, "keep resized training images in memory")
    cache_images_mb: int = _opt(4096, "the memory --cache-images may fill, in MB (default 4096; with --workers, "
                                      "per loader process): once full, further images are read from disk each "
                                      "time", metavar="MB")
    device: str | None = _opt(None, "torch device, e.g. cpu or cuda (default: cpu; under torchrun cuda means "
                                    "each process's own GPU)")
    resume: bool = _opt(False, "continue the run in --out from its last checkpoint")
    overwrite: bool = _opt(False, "start afresh in an --out that already holds a run (without it, or --resume, such "
                                  "an --out is refused)")
    modelscope: bool = _opt(False, "write last/ and best/ in ModelScope's layout (pytorch_model.bin with every "
                                   "OFA key, which ModelScope's pipeline loads) instead of ours (model.safetensors)")
    progress: bool = _opt(True, "no progress bar", flag="--no-progress")
    # a teacher's extra loss terms (`ofa-ground distill`)
    distill: DistillConfig | None = field(default=None, metadata={"cli": False})


@dataclass
class DistillConfig:
    """Distillation's loss terms (train/distill.py); the defaults are OFA-Compress's."""

    teacher: str = field(metadata={"help": "the teacher: a model directory or weights file, a bundled model's "
                                           "name or a hub id (as predict --model takes)"})
    kd_weight: float = _opt(OFA_COMPRESS_KD_WEIGHT, "weight of the per-token soft cross-entropy (default "
                            "10000/59457, OFA-Compress's 10000 on its vocabulary-mean loss)")
    temperature: float = _opt(1.0, "softmax temperature of the soft-label loss (teacher and student)")
    attn_weight: float = _opt(1.0, "weight of the attention-map MSE (0: off)")
    layer_map: str = _opt("first", "student layer i <-> teacher layer i (first, OFA-Compress) or spread over the "
                                   "teacher's depth (uniform)", choices=LAYER_MAPS)
    attn_heads: str = _opt("sum", "sum (OFA-Compress) or average attention maps over heads before comparing",
                           choices=("sum", "mean"))
    hidden_weight: float = _opt(0.0, "ours, off by default (0; OFA-Compress matches no hidden states): weight of the "
                                     "MSE between mapped layers' outputs, through a learned projection where the "
                                     "widths differ")
    teacher_cache: str | None = _opt(None, "ours: compute the teacher's soft labels for every training sample (and "
                                           "its mirror with --augment flip) once, into FILE (safetensors, float16), "
                                           "and read them from there instead of running the teacher at every step; "
                                           "reused by later runs with the same teacher and data (needs --attn-weight "
                                           "0 --hidden-weight 0, no jitter)", metavar="FILE")
    teacher_bf16: bool = _opt(False, "run the teacher under bfloat16 autocast")


# OFA-Compress's distillation schedule, which `ofa-ground distill` uses instead of TrainConfig's defaults
DISTILL_RECIPE = {"epochs": 5, "batch_size": 8, "lr": 1e-4, "min_lr": 1e-7, "warmup_ratio": 0.01}
