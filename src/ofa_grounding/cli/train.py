"""`ofa-ground train` and `ofa-ground distill`: OFA's RefCOCO finetuning and OFA-Compress's distillation, which
share the training arguments (the defaults differ).

The flags are the fields of `train.config.TrainConfig` and `DistillConfig`, with their defaults and help:
one source, so the command line and the Python API cannot drift apart."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

from ..train.config import DISTILL_RECIPE, DistillConfig, TrainConfig
from .common import EXIT_OK, UsageError, set_threads, threads_argument, training_model_help
from .loading import run_training

_TYPES = {"int": int, "float": float, "str": str}


def config_arguments(parser: argparse.ArgumentParser, config: type, defaults: dict[str, Any] | None = None,
                     only: Collection[str] | None = None, skip: Collection[str] = ()) -> None:
    """One flag per field of the dataclass `config` (`foo_bar` -> `--foo-bar`; of the fields in `only`, if
    given, less those in `skip`), unless its metadata says cli=False; `defaults` replaces some defaults."""
    for f in dataclasses.fields(config):
        meta = dict(f.metadata)
        if not meta.pop("cli", True) or (only is not None and f.name not in only) or f.name in skip:
            continue
        flag = meta.pop("flag", "--" + f.name.replace("_", "-"))
        kwargs: dict[str, Any] = {"dest": f.name, **{k: v for k, v in meta.items() if v is not None}}
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default, kwargs["required"] = None, True
        default = (defaults or {}).get(f.name, default)
        if f.type == "bool":  # a switch that turns its default around
            kwargs["action"] = "store_false" if default else "store_true"
        elif "type" not in kwargs:
            kwargs["type"] = _TYPES[f.type.removesuffix(" | None")]
        parser.add_argument(flag, default=default, **kwargs)


def _values(args: argparse.Namespace, config: type) -> dict[str, Any]:
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(config) if hasattr(args, f.name)}


def add_parser(sub: Any) -> None:
    t = sub.add_parser("train", help="finetune (or train preset:NAME from random weights) on grounding data",
                       description="OFA's RefCOCO finetuning recipe. Multi-process: torchrun --nproc_per_node N "
                                   "-m ofa_grounding.cli train ... (DDP; gloo on CPU, nccl on GPU).")
    t.add_argument("--model", required=True, metavar="MODEL", help=training_model_help("the initial weights"))
    config_arguments(t, TrainConfig)
    threads_argument(t, "the model's")
    t.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    t.set_defaults(func=run)

    d = sub.add_parser("distill", help="train a student with a teacher's help (OFA-Compress's distillation)",
                       description="OFA-Compress's task-specific distillation for grounding: the task loss plus a "
                                   "soft-label loss on the teacher's distribution over the bins and attention-map "
                                   "matching between mapped layers. Everything else as `train` (resume, torchrun, "
                                   "bf16, validation, logs). Defaults: OFA-Compress's RefCOCO settings.")
    config_arguments(d, DistillConfig, only=("teacher",))
    d.add_argument("--student", required=True, dest="model", metavar="MODEL",
                   help=training_model_help("the student's initial weights"))
    config_arguments(d, TrainConfig, DISTILL_RECIPE)
    config_arguments(d, DistillConfig, skip=("teacher",))
    threads_argument(d, "the student's and the teacher's")
    d.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    d.set_defaults(func=run)


def training_config(args: argparse.Namespace) -> TrainConfig:
    """The parsed flags of `train` or `distill` as the library's settings."""
    cfg = TrainConfig(**_values(args, TrainConfig))
    if args.command == "distill":
        cfg.distill = DistillConfig(**_values(args, DistillConfig))
    return cfg


def run(args: argparse.Namespace) -> int:
    if args.resume and not (Path(args.out) / "last" / "trainer_state.json").is_file():  # before any loading
        raise UsageError(f"--resume: no checkpoint in {args.out}/last")
    set_threads(args.threads)
    summary = run_training(training_config(args))
    if summary is not None and int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary))
    return EXIT_OK
