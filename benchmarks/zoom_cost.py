#!/usr/bin/env python
"""What the second look at small answers (`zoom`) costs per single query: the README example (four large
shapes: no second look) and a drawings-probe scene of 20-40 px objects on 640 x 480 (a second look for each),
with the model's zoom and without it, taking turns in one process.

    python benchmarks/zoom_cost.py [--model demo] [--queries 30] [--threads 2]

Prints the median (min / max) milliseconds of `predict(image, text)` from a PNG path, feature cache off.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from drawings_probe import queries, scene
from ofa_grounding import Grounder
from ofa_grounding.bench import cpu_name

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="demo")
    ap.add_argument("--queries", type=int, default=30, help="timed queries per row (default 30)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with_zoom = Grounder.from_pretrained(args.model, cache_mb=0)
    if with_zoom.zoom is None:
        raise SystemExit(f"{args.model} has no zoom in its grounding.json: nothing to compare")
    without = Grounder.from_pretrained(args.model, cache_mb=0, zoom=None)
    image, objects = scene("small objects 20-40 px", random.Random("zoom-cost"))
    with tempfile.TemporaryDirectory() as tmp:
        small = Path(tmp) / "small.png"
        image.save(small)
        cases = {"README example, 'the red circle'": (ROOT / "examples" / "shapes.png", "the red circle"),
                 "20-40 px objects, " + repr(queries("", objects, random.Random(0))[0][0]):
                     (small, queries("", objects, random.Random(0))[0][0])}
        times: dict[tuple[str, str], list[float]] = {}
        looked: dict[str, bool] = {}
        for _ in range(args.queries + 3):  # 3 warm-up rounds
            for case, (path, text) in cases.items():
                for label, grounder in (("zoom", with_zoom), ("no zoom", without)):
                    start = time.perf_counter()
                    result = grounder.predict(str(path), text)
                    times.setdefault((case, label), []).append(1000 * (time.perf_counter() - start))
                    if label == "zoom":
                        looked[case] = result.zoomed
    print(f"{cpu_name()}, torch {torch.__version__}, {args.threads} thread(s); model {args.model}; "
          f"{args.queries} queries per row, medians (min / max)\n")
    print("| query | second look | with zoom, ms | without, ms | ratio |")
    print("| --- | --- | ---: | ---: | ---: |")
    for case in cases:
        row = []
        for label in ("zoom", "no zoom"):
            t = times[(case, label)][3:]
            row.append((statistics.median(t), min(t), max(t)))
        print(f"| {case} | {'yes' if looked[case] else 'no'} | {row[0][0]:.1f} ({row[0][1]:.1f} / {row[0][2]:.1f}) | "
              f"{row[1][0]:.1f} ({row[1][1]:.1f} / {row[1][2]:.1f}) | {row[0][0] / row[1][0]:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
