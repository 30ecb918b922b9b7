"""What a model costs per query, side by side: parameters, file size, FLOPs and single-query latency.

    python benchmarks/model_cost.py [--model demo --model demo-small ...] [--iters 30] [--threads 2] [--stages] [--json]

FLOPs are counted by torch's FlopCounterMode over one `predict` (matrix products and convolutions: what the
hardware must compute, independent of its load). Latency is the median of `--iters` single queries (one image
file, one description, feature cache off, as `ofa-ground bench` times them), the models taking turns query by
query in one process, so that a busy or drifting machine slows them alike; ratios are against the first model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from ofa_grounding import Grounder
from ofa_grounding.bench import cpu_name, synthetic_images
from ofa_grounding.model_names import parse_model_name

TEXT = "the red circle on the left"


def weights_mb(name: str) -> float:
    source = parse_model_name(name)
    files = [source.path] if source.path.is_file() else list(source.path.glob("*.safetensors")) + \
        list(source.path.glob("*.bin"))
    return sum(f.stat().st_size for f in files) / 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", help="a model name or directory (repeatable; default: demo and "
                                                     "demo-small)")
    ap.add_argument("--iters", type=int, default=30, help="single queries per model (default 30)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--stages", action="store_true", help="also time the first look stage by stage")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON too")
    args = ap.parse_args()
    names = args.model or ["demo", "demo-small"]
    torch.set_num_threads(args.threads)
    image = synthetic_images(Path(tempfile.mkdtemp()), 1)[0]  # 640 x 480, as bench's single query
    grounders = {n: Grounder.from_pretrained(n, cache_mb=0) for n in names}
    rows = {}
    for name, g in grounders.items():
        with FlopCounterMode(display=False) as counter:
            g.predict(image, TEXT)
        rows[name] = {"model": name, "parameters": g.model.num_parameters(),
                      "file_mb": weights_mb(name), "gflops": counter.get_total_flops() / 1e9, "times": []}
    for g in grounders.values():  # warm-up
        g.predict(image, TEXT)
    for _ in range(args.iters):
        for name, g in grounders.items():
            t = time.perf_counter()
            g.predict(image, TEXT)
            rows[name]["times"].append(time.perf_counter() - t)
    base = rows[names[0]]
    base_ms = statistics.median(base["times"]) * 1e3
    print(f"machine: {cpu_name()}, {args.threads} threads; torch {torch.__version__}; {args.iters} single queries "
          f"per model, taking turns")
    print("| model | parameters | file | GFLOPs / query | single query, median (min / max) | speed-up |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for row in rows.values():
        ms = [t * 1e3 for t in row["times"]]
        row["median_ms"] = statistics.median(ms)
        row["speedup"] = base_ms / row["median_ms"]
        print(f"| {row['model']} | {row['parameters'] / 1e6:.2f} M | {row['file_mb']:.1f} MB | {row['gflops']:.3f} "
              f"({row['gflops'] / base['gflops']:.2f}x) | {row['median_ms']:.1f} ms ({min(ms):.1f} / {max(ms):.1f}) "
              f"| {row['speedup']:.2f}x |")
    if args.stages:
        stages = time_stages(grounders, image, args.iters)
        print()
        print_stages(stages, names)
        for name in names:
            rows[name]["first_look_ms"] = {s: statistics.median(t) * 1e3 for s, t in stages[name].items()}
    if args.json:
        print(json.dumps([{k: v for k, v in r.items() if k != "times"} for r in rows.values()], indent=2))
    return 0


STAGES = ("decode the file", "resize + normalise", "backbone", "encoder", "beam search + box")


def first_look(g: Grounder, image: str, times: dict[str, list[float]]) -> None:
    """One query's first look, stage by stage, as `Grounder.predict` runs it (no second look)."""
    marks = [time.perf_counter()]
    rgb = g.load_image(image)
    marks.append(time.perf_counter())
    pixels = g.image_tensor(rgb).unsqueeze(0)
    marks.append(time.perf_counter())
    features, grid = g.model.image_features(pixels)
    marks.append(time.perf_counter())
    ids, cut = g.tokenize_text(TEXT)
    enc, src_len = g.encode_texts(features, grid, [ids])
    marks.append(time.perf_counter())
    g.decode(enc, src_len, [rgb.size], [TEXT], [cut])
    marks.append(time.perf_counter())
    for stage, start, end in zip(STAGES, marks, marks[1:]):
        times[stage].append(end - start)
    times["first look"].append(marks[-1] - marks[0])


def time_stages(grounders: dict[str, Grounder], image: str, iters: int) -> dict[str, dict[str, list[float]]]:
    stages = {name: {s: [] for s in (*STAGES, "first look")} for name in grounders}
    for g in grounders.values():  # warm-up
        first_look(g, image, {s: [] for s in (*STAGES, "first look")})
    for _ in range(iters):
        for name, g in grounders.items():
            first_look(g, image, stages[name])
    return stages


def print_stages(stages: dict[str, dict[str, list[float]]], names: list[str]) -> None:
    print("First look by stage, median ms (share of the model's first look); ratio: first model / this one")
    print("| stage | " + " | ".join(names) + " | " + " | ".join(f"ratio {n}" for n in names[1:]) + " |")
    print("| --- |" + " ---: |" * (2 * len(names) - 1))
    for stage in (*STAGES, "first look"):
        ms = [statistics.median(stages[n][stage]) * 1e3 for n in names]
        totals = [statistics.median(stages[n]["first look"]) * 1e3 for n in names]
        cells = [f"{m:.2f} ({m / t:.0%})" for m, t in zip(ms, totals)]
        print(f"| {stage} | " + " | ".join(cells) + " | " + " | ".join(f"{ms[0] / m:.2f}x" for m in ms[1:]) + " |")


if __name__ == "__main__":
    sys.exit(main())
