"""`ofa-ground predict`: descriptions in one image (a table, or one JSON object with --json), or a collection
of inputs from --jsonl (one JSON line each, to stdout or --out; `predict_jsonl`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..config import DEFAULT_MAX_PIXELS
from ..errors import first_line
from .common import (
    EXIT_OK,
    UsageError,
    check_writable_image,
    min_confidence_argument,
    model_argument,
    precision_arguments,
    threads_argument,
)
from .loading import load_grounder


def add_parser(sub: Any) -> None:
    p = sub.add_parser("predict", help="ground descriptions in an image",
                       description="Ground one or more descriptions in an image, or a batch from --jsonl.")
    model_argument(p)
    p.add_argument("image", nargs="?", help="image file")
    p.add_argument("text", nargs="*", help="one or more descriptions")
    p.add_argument("--jsonl", type=Path, metavar="IN", help='file with one {"image": path, "text": str} per line '
                   "(paths relative to the file's folder), any number of lines; prints (or writes to --out) one JSON "
                   "line per input, in input order, with its line number")
    p.add_argument("--out", type=Path, metavar="OUT.jsonl",
                   help="with --jsonl: write the answers to this file instead of stdout, each chunk flushed to disk; "
                        "the same command run again continues where a stopped run left it")
    p.add_argument("--overwrite", action="store_true",
                   help="with --out: start the file again, even if it holds another input's answers")
    p.add_argument("--workers", type=int, metavar="N",
                   help="with --jsonl: answer in N processes on this machine, each with --threads threads (default "
                        "1), the output the same bytes (default: the idle cores on a CPU, 1 with --device cuda; "
                        "under torchrun each process is one worker)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--alternatives", action="store_true", help="also print the other beams' boxes")
    p.add_argument("--onnx", type=Path, metavar="DIR",
                   help="run an `export-onnx` folder with onnxruntime instead of torch (instead of --model)")
    p.add_argument("--draw", type=Path, metavar="OUT.png",
                   help="also write the image with the boxes drawn and labelled (one image; not with --jsonl)")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: cpu)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help=f"refuse larger images (default {DEFAULT_MAX_PIXELS})")
    p.add_argument("--batch-size", type=int, default=8,
                   help="descriptions encoded and decoded together in one model call, with --jsonl those of "
                        "several images, the input read in chunks of 8 x BATCH_SIZE lines (default 8)")
    min_confidence_argument(p)
    precision_arguments(p)
    threads_argument(p)
    p.add_argument("--no-progress", action="store_true", help="with --jsonl: no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.jsonl is not None:
        if args.image or args.text:
            raise UsageError("give either IMAGE TEXT... or --jsonl FILE, not both")
        if args.draw is not None:
            raise UsageError("--draw works with one IMAGE, not with --jsonl")
        if args.overwrite and args.out is None:
            raise UsageError("--overwrite goes with --out")
        from .predict_jsonl import run_jsonl

        return run_jsonl(args)
    for option in ("out", "workers"):
        if getattr(args, option) is not None:
            raise UsageError(f"--{option} goes with --jsonl")
    if args.overwrite:
        raise UsageError("--overwrite goes with --jsonl and --out")
    if not args.image or not args.text:
        raise UsageError("predict needs IMAGE and at least one TEXT (or --jsonl FILE)")
    if args.draw is not None:
        check_writable_image(args.draw, "--draw")
    grounder = load_grounder(args)
    results = grounder.predict(args.image, args.text)  # an unreadable image: ImageLoadError, exit 1
    width, height = results[0].image_size
    if args.draw is not None:
        from ..draw import draw_results

        try:
            draw_results(grounder.load_image(args.image), results).save(args.draw)
        except (OSError, ValueError) as exc:
            raise UsageError(f"--draw {args.draw}: cannot write ({first_line(exc)})") from None
    if args.json:
        print(json.dumps({"image": args.image, "width": width, "height": height,
                          "results": [r.to_dict(alternatives=args.alternatives) for r in results]}))
    else:
        print(_table(args.image, width, height, results, args.alternatives))
    return EXIT_OK  # truncated descriptions: the Grounder's warning, on stderr


def _table(image: str, width: int, height: int, results: list, alternatives: bool) -> str:
    """Box, score, the confidence as `GroundingResult.confidence_label` words it ("93 % sure" when calibrated,
    "raw 0.031" when not; the alternatives' are raw), text."""
    lines = [f"{_printable(image)} ({width}x{height})",
             f"{'x0':>9} {'y0':>9} {'x1':>9} {'y1':>9} {'score':>8} {'confidence':>11}  text"]
    for r in results:
        lines.append(" ".join(f"{v:9.2f}" for v in r.box) + f" {r.score:8.4f} {r.confidence_label():>11}  "
                     f"{_printable(r.text)}" + ("" if r.found else "  (not found: empty description)"
                                                if not r.text.strip() else "  (not found)"))
        if alternatives:
            for a in r.alternatives:
                lines.append(" ".join(f"{v:9.2f}" for v in a.box) + f" {a.score:8.4f} {f'raw {a.confidence:.3f}':>11}"
                             "    (alt)")
    return "\n".join(lines)


def _printable(text: str) -> str:
    """Control characters (a terminal would act on ESC sequences) as escapes, for table output."""
    import unicodedata

    return "".join(c if unicodedata.category(c)[0] != "C" else repr(c)[1:-1] if ord(c) < 0x10000 else
                   f"\\U{ord(c):08x}" for c in text)
