"""The CLI's model-loading call sites, in this one place, all through `loader.load_model` (the Grounder's
`from_pretrained` and training use it too). Every heavy import is deferred, so that --help stays instant."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import CheckpointError, first_line
from .common import UsageError, require_extra, set_threads


def load_grounder(args: argparse.Namespace) -> Any:
    """predict, eval, calibrate, serve: a Grounder from --model (or --onnx), with the options' checks done before
    the slow load, and torch's threads set from --threads (`common.set_threads`)."""
    from ..loader import DEFAULT_MODEL
    from ..predictor import Grounder  # torch import deferred so that --help is instant

    threshold = getattr(args, "min_confidence", None)
    if threshold is not None and not 0 <= threshold <= 1:
        raise UsageError(f"--min-confidence must be in [0, 1], got {threshold}")
    if args.max_pixels is not None and args.max_pixels < 1:
        raise UsageError(f"--max-pixels must be at least 1, got {args.max_pixels}")
    given = {} if threshold is None else {"min_confidence": threshold}
    if getattr(args, "no_zoom", False):
        given["zoom"] = None
    if getattr(args, "onnx", None) is not None:
        if args.model is not None:
            raise UsageError("give either --model or --onnx, not both")
        require_extra("onnx", "--onnx", "onnxruntime")
        from ..onnx_export import onnx_grounder

        threads = set_threads(args.threads)  # onnxruntime's too
        try:
            return onnx_grounder(args.onnx, threads=threads, max_pixels=args.max_pixels, batch_size=args.batch_size,
                                 **given)
        except (OSError, ValueError, KeyError) as exc:
            raise UsageError(f"--onnx {args.onnx}: not an export-onnx folder ({exc})") from None
    if args.model is None and not DEFAULT_MODEL.is_dir():
        raise UsageError("no --model given, and this installation has no bundled demo model; "
                         "pass --model DIR (an OFA model directory)")
    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    if args.cache_mb < 0:
        raise UsageError("--cache-mb must not be negative")
    set_threads(args.threads)
    try:
        return Grounder.from_pretrained(args.model, device=args.device, max_pixels=args.max_pixels,
                                        batch_size=args.batch_size, precision=args.precision, cache_mb=args.cache_mb,
                                        cache_dir=args.cache_dir,
                                        **given)
    except CheckpointError as exc:
        raise UsageError(f"--model: {exc}") from None
    except (RuntimeError, ValueError) as exc:  # e.g. an unknown or unavailable device
        what = f"--device {args.device}" if args.device is not None else "--model"
        raise UsageError(f"{what}: {first_line(exc)}") from None


def load_any(model: str, cache_dir: str | None) -> Any:
    """convert, info, export-onnx: a checkpoint in any layout, a bundled model or a hub id (CheckpointError:
    exit 2)."""
    from ..loader import load_model

    return load_model(model, cache_dir=cache_dir)


def run_training(cfg: Any) -> dict[str, Any] | None:
    """train, distill: `train.loop.train` loads the initial model (or preset:NAME's random weights, or the run's
    last/ for --resume) and the teacher itself; its ValueErrors (bad settings, CheckpointError, DataError, an
    unreadable image) are bad usage."""
    from ..train.loop import train

    try:
        return train(cfg)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
