"""`ofa-ground export-onnx`: a model as ONNX graphs, for `predict --onnx` (needs the onnx extra)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .common import EXIT_OK, UsageError, model_sources, require_extra
from .loading import load_any


def add_parser(sub: Any) -> None:
    x = sub.add_parser("export-onnx", help="export a model to ONNX graphs (needs the onnx extra)",
                       description="Write image.onnx, encoder.onnx, decoder_start.onnx, decoder_step.onnx (KV cache "
                                   "as inputs/outputs) and onnx_config.json to OUT; `predict --onnx OUT` runs them "
                                   "with onnxruntime through the same beam search.")
    x.add_argument("model", metavar="MODEL", help=model_sources())
    x.add_argument("out", type=Path, help="output directory")
    x.add_argument("--opset", type=int, default=17, help="ONNX opset version (14 up to the newest torch writes)")
    x.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output directory")
    x.add_argument("--cache-dir", help="hub cache for ids (default: the hubs' own caches; see README)")
    x.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    require_extra("onnx", "export-onnx", "onnx", "onnxscript")
    from ..onnx_export import MIN_OPSET, export_onnx, max_opset

    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"{args.out} exists and is not a directory")
    if args.out.exists() and any(args.out.iterdir()) and not args.overwrite:  # as `convert`, before the load
        raise UsageError(f"{args.out} exists and is not empty (use --overwrite to replace it)")
    if args.opset < MIN_OPSET or args.opset > (max_opset() or args.opset):  # before the load
        raise UsageError(f"--opset must be {MIN_OPSET}-{max_opset()} (attention needs {MIN_OPSET}), got {args.opset}")
    ckpt = load_any(args.model, args.cache_dir)
    try:
        out = export_onnx(ckpt, args.out, args.opset)
    except ValueError as exc:  # a model the export cannot express
        raise UsageError(str(exc)) from None
    sizes = ", ".join(f"{p.name} {p.stat().st_size / 2**20:.1f} MB" for p in sorted(out.glob("*.onnx")))
    print(f"{args.model} -> {out}: {sizes}")
    return EXIT_OK
