"""`ofa-ground make-synthetic`: the synthetic referring-expression benchmark, with trivial baselines."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .common import EXIT_OK, UsageError, pct


def add_parser(sub: Any) -> None:
    s = sub.add_parser("make-synthetic", help="write the synthetic referring-expression benchmark",
                       description="Deterministic scenes of shapes with referring expressions, written as "
                                   "OUT/{train,val,test}.jsonl + OUT/images/*.png; prints trivial baselines.")
    s.add_argument("out", type=Path, help="output folder")
    s.add_argument("--n", type=int, default=1000, help="number of samples (default 1000)")
    s.add_argument("--seed", type=int, default=0, help="seed of the scenes and expressions (same seed, same files)")
    s.add_argument("--world", choices=("v1", "v2"), default="v2",
                   help="v2 (default): the wide world (canvases of any size and aspect ratio, dark or light "
                        "backgrounds, rotated shapes, 12 colours, 10 shapes, varied phrasings, absent objects); "
                        "v1: the square light scenes of the recorded benchmark numbers (docs/evaluation.md)")
    s.add_argument("--size", type=int, default=256, help="v1 only: image side in pixels (default 256)")
    s.add_argument("--max-side", type=int, default=1600,
                   help="v2 only: largest canvas side in pixels (160-1600; default 1600)")
    s.add_argument("--absent", type=float, default=0.5,
                   help='v2 only: descriptions of absent objects per scene, on average (rows with "box": null; '
                        "default 0.5)")
    s.add_argument("--corner-squares", type=float, default=0.0, metavar="SHARE",
                   help="v2 training data: the share of scenes (0-1) that hold squares standing on a corner "
                        "beside upright diamonds, the pair most easily confused (default 0: the v2 world as "
                        "benchmarked)")
    s.add_argument("--per-scene", type=int, default=2, help="expressions per scene (default 2)")
    s.add_argument("--simple", type=int, default=0,
                   help="training data only: add up to this many easy expressions per train scene "
                        "(kind 'simple'; benchmark rows unchanged; default 0)")
    s.add_argument("--workers", type=int, default=1, help="processes drawing scenes (same files; default 1)")
    s.add_argument("--json", action="store_true", help="print counts and baselines as JSON")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..synthetic import baseline_accuracies, write_synthetic

    if args.n < 1 or args.size < 64 or args.per_scene < 1 or args.simple < 0 or args.workers < 1:
        raise UsageError("--n, --per-scene and --workers must be positive, --simple not negative and --size "
                         "at least 64")
    if not 160 <= args.max_side <= 1600 or not 0 <= args.absent <= 4 or not 0 <= args.corner_squares <= 1:
        raise UsageError("--max-side must be 160-1600, --absent 0-4 and --corner-squares 0-1")
    if args.corner_squares and args.world != "v2":
        raise UsageError("--corner-squares draws v2 scenes; pass --world v2")
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"{args.out} exists and is not a directory")
    images = (args.out / "images").is_dir() and any((args.out / "images").iterdir())
    if any(args.out.glob("*.jsonl")):
        raise UsageError(f"{args.out} already holds a dataset (images/ or .jsonl files); choose a new folder")
    if images:  # the rows are written last: images without them are what an interrupted run leaves
        raise UsageError(f"{args.out} already holds images/ but no .jsonl files (an interrupted make-synthetic?); "
                         "remove the folder or choose a new one")
    print(f"drawing {args.n} samples ({args.world}) into {args.out} ...", file=sys.stderr, flush=True)
    counts = write_synthetic(args.out, args.n, args.seed, (args.size, args.size), args.per_scene, args.simple,
                             args.workers, world=args.world, absent=args.absent, max_side=args.max_side,
                             progress=not args.no_progress, corner_squares=args.corner_squares)
    rows = {split: [json.loads(line) for line in (args.out / f"{split}.jsonl").open(encoding="utf-8")]
            for split in counts}
    baselines = {split: baseline_accuracies(r) for split, r in rows.items() if r}
    if args.json:
        print(json.dumps({"out": str(args.out), "counts": counts, "baselines_acc50": baselines}))
        return EXIT_OK
    print(f"wrote {sum(counts.values())} samples to {args.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    names = list(next(iter(baselines.values())))
    print("\ntrivial baselines, Acc@0.5 (%):")
    print(f"{'':50}" + "".join(f"{split:>8}" for split in baselines))
    for name in names:
        print(f"{name:50}" + "".join(f"{pct(b[name]):>8}" for b in baselines.values()))
    return EXIT_OK
