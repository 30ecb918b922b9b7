"""`ofa-ground predict`: descriptions in one image (a table, or one JSON object with --json), or a batch of
inputs from --jsonl (one JSON line each)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..config import DEFAULT_MAX_PIXELS
from ..errors import ImageLoadError
from .common import (
    EXIT_FAILED,
    EXIT_OK,
    UsageError,
    check_writable_image,
    error,
    min_confidence_argument,
    model_argument,
    precision_arguments,
    threads_argument,
    warn,
)
from .loading import load_grounder

JSONL_IMAGES_PER_CALL = 16  # --jsonl: images per predict_batch call


def add_parser(sub: Any) -> None:
    p = sub.add_parser("predict", help="ground descriptions in an image",
                       description="Ground one or more descriptions in an image, or a batch from --jsonl.")
    model_argument(p)
    p.add_argument("image", nargs="?", help="image file")
    p.add_argument("text", nargs="*", help="one or more descriptions")
    p.add_argument("--jsonl", type=Path, help='file with one {"image": path, "text": str} per line '
                   "(paths relative to the file's folder); prints one JSON line per input")
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
                        "several images (default 8)")
    min_confidence_argument(p)
    precision_arguments(p)
    threads_argument(p)
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.jsonl is not None:
        if args.image or args.text:
            raise UsageError("give either IMAGE TEXT... or --jsonl FILE, not both")
        if args.draw is not None:
            raise UsageError("--draw works with one IMAGE, not with --jsonl")
        return _predict_jsonl(args)
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
            raise UsageError(f"--draw {args.draw}: cannot write ({str(exc).splitlines()[0]})") from None
    if args.json:
        print(json.dumps({"image": args.image, "width": width, "height": height,
                          "results": [r.to_dict(alternatives=args.alternatives) for r in results]}))
    else:
        print(_table(args.image, width, height, results, args.alternatives))
    return EXIT_OK  # truncated descriptions: the Grounder's warning, on stderr


def _predict_jsonl(args: argparse.Namespace) -> int:
    try:
        lines = args.jsonl.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--jsonl {args.jsonl}: cannot read ({exc})") from None
    # Every line parsed first, so that one image's descriptions run together (one image load).
    records = [_parse_line(line, f"{args.jsonl}:{n}") for n, line in enumerate(lines, 1) if line.strip()]
    if not records:  # an empty batch is not an error (a pipeline's empty day), but say so
        warn(f"--jsonl {args.jsonl}: no inputs, nothing to do")
        return EXIT_OK
    grounder = load_grounder(args)
    outputs: list[dict[str, Any]] = [dict(r) for r in records]
    # The lines of each image, in order of first appearance. Not left to predict_batch: given the lines, it
    # would load an image once per line, fail the whole call at the first unreadable one, and decode the
    # descriptions in other batches than these (the same tokens and boxes, but scores not to the last bit).
    by_image: dict[str, list[int]] = {}
    for i, rec in enumerate(records):
        if "error" not in rec:
            by_image.setdefault(rec["image"], []).append(i)
    # Images are loaded one by one (a bad one fails only its own lines), then run 16 at a time through
    # predict_batch: one backbone pass per image, descriptions of several images decoded together.
    groups = list(by_image.items())
    for start in range(0, len(groups), JSONL_IMAGES_PER_CALL):
        batch: list[tuple[Any, list[int]]] = []
        for image, indices in groups[start:start + JSONL_IMAGES_PER_CALL]:
            path = Path(image) if Path(image).is_absolute() else args.jsonl.parent / image
            try:
                batch.append((grounder.load_image(path), indices))
            except ImageLoadError as exc:
                for i in indices:
                    outputs[i]["error"] = str(exc)
        answers = grounder.predict_batch([(rgb, [records[i]["text"] for i in indices]) for rgb, indices in batch])
        for (_, indices), results in zip(batch, answers):
            for i, r in zip(indices, results):
                outputs[i] = _jsonl_row(records[i]["image"], r, args.alternatives)
    failed = 0
    for out in outputs:
        print(json.dumps(out))
        if "error" in out:
            failed += 1
            error(out["error"])
    return EXIT_FAILED if failed else EXIT_OK


def _parse_line(line: str, where: str) -> dict[str, Any]:
    """One --jsonl line: {"image", "text"}, or {"image": None, "text": None, "error"} saying where and why."""
    try:
        item = json.loads(line)
        if not isinstance(item, dict) or not isinstance(item.get("image"), str) or not isinstance(
                item.get("text"), str):
            raise ValueError('expected {"image": str, "text": str}')
        return {"image": item["image"], "text": item["text"]}
    except ValueError as exc:
        return {"image": None, "text": None, "error": f"{where}: {str(exc).splitlines()[0]}"}


def _jsonl_row(image: str, result: Any, alternatives: bool) -> dict[str, Any]:
    """One --jsonl answer: the input's image and text, the image's size, then the rest of `to_dict`."""
    fields = result.to_dict(alternatives=alternatives)
    width, height = result.image_size
    return {"image": image, "text": fields.pop("text"), "width": width, "height": height, **fields}


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
