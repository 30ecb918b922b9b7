"""`ofa-ground convert`: a checkpoint in any supported layout, written in another."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .. import __version__
from .common import EXIT_OK, UsageError, model_sources
from .loading import load_any


def add_parser(sub: Any) -> None:
    c = sub.add_parser("convert", help="convert a checkpoint to another layout",
                       description="Read a checkpoint in any supported layout (safetensors, ModelScope, Hugging Face "
                                   "OFA, OFA's fairseq .pt), a bundled model or a hub id, and write it as --to: "
                                   "safetensors (ours), modelscope (pytorch_model.bin + configuration.json) or hf "
                                   "(Hugging Face OFA).")
    c.add_argument("src", metavar="MODEL", help=model_sources())
    c.add_argument("dst", type=Path, help="output directory")
    c.add_argument("--to", required=True, choices=("safetensors", "modelscope", "hf"),
                   help="safetensors: ours (model.safetensors); modelscope: pytorch_model.bin + configuration.json; "
                        "hf: Hugging Face OFA's layout")
    c.add_argument("--dtype", choices=("fp32", "fp16"), default="fp32", help="stored precision (default fp32)")
    c.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output directory")
    c.add_argument("--cache-dir", help="hub cache for ids (default: the hubs' own caches; see README)")
    c.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..checkpoint import save_checkpoint, write_card, write_grounding

    if args.dst.exists() and not args.dst.is_dir():
        raise UsageError(f"{args.dst} exists and is not a directory")
    if args.dst.exists() and any(args.dst.iterdir()) and not args.overwrite:  # before the load
        raise UsageError(f"{args.dst} exists and is not empty (use --overwrite to replace it)")
    ckpt = load_any(args.src, args.cache_dir)
    save_checkpoint(args.dst, ckpt.model, ckpt.tokenizer_dir, ckpt.preprocess, ckpt.generation, layout=args.to,
                    dtype=torch.float16 if args.dtype == "fp16" else None,
                    metadata={"source": str(args.src), "converted_by": f"ofa-grounding {__version__}"})
    carried = write_grounding(args.dst, ckpt.min_confidence, ckpt.calibration, ckpt.zoom)
    card = write_card(args.dst, ckpt.card)
    print(f"{args.src} ({ckpt.layout}) -> {args.dst} ({args.to}, {args.dtype})"
          + (f"; its calibration, threshold and zoom in {carried.name}" if carried else "")
          + (f"; its model card in {card.name}" if card else ""))
    return EXIT_OK
