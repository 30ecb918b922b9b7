"""Where the time of grounding K descriptions of one image goes, and how close each part runs to this CPU's
arithmetic peak: the floor below which fp32 cannot go without computing less.

    python benchmarks/where_time_goes.py [--model DIR] [--per-image 7] [--size 640x480] [--threads 1] [--iters 3]

One `predict_batch` of K descriptions of one image (feature cache off: the backbone runs once, the encoder K
times), under torch's profiler; each operation goes to a part (matrix products, fused attention,
convolutions, the rest), with its FLOPs from the recorded shapes and arguments. The peak is a 2048^3 matrix
product measured in the same run, at the same threads. The table is one more call, profiled; the wall time is
the median of `--iters` unprofiled calls. Default model: the fixture OFA-tiny of ../shared/reference (512 px).
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from ofa_grounding import Grounder
from ofa_grounding.bench import cpu_name
from ofa_grounding.synthetic import make_scene

ROOT = Path(__file__).resolve().parents[1]
GEMM = {"aten::addmm", "aten::mm", "aten::bmm", "aten::baddbmm"}
ATTENTION = {"aten::_scaled_dot_product_flash_attention_for_cpu"}
CONV = {"mkldnn::_convolution_pointwise", "aten::mkldnn_convolution"}  # the fused backbone's, then the plain one's


def gemm_flops(name: str, shapes: list[list[int]]) -> float:
    if name == "aten::addmm":  # bias, (m, k), (k, n)
        (m, k), (_, n) = shapes[1], shapes[2]
        return 2.0 * m * k * n
    if name == "aten::mm":
        (m, k), (_, n) = shapes[0], shapes[1]
        return 2.0 * m * k * n
    (b, m, k), (_, _, n) = shapes[-2] if name == "aten::baddbmm" else shapes[0], shapes[-1]
    return 2.0 * b * m * k * n


def attention_flops(shapes: list[list[int]]) -> float:
    (b, h, t, d), (_, _, s, _) = shapes[0], shapes[1]
    return 4.0 * b * h * t * s * d  # q.k and p.v


def conv_flops(shapes: list[list[int]], args: list) -> float:
    """oneDNN's fused convolution: input (N, C, H, W), weight (O, C/g, kh, kw), then padding, stride and
    dilation among the call's recorded arguments; the variant that adds a residual takes it second."""
    first = 2 if args[3] is None else 1  # (input, residual, weight, bias, padding, ...) or (input, weight, ...)
    (n, _, h, w), (o, c, kh, kw) = shapes[0], shapes[first]
    (ph, pw), (sh, sw), (dh, dw) = args[first + 2], args[first + 3], args[first + 4]
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    return 2.0 * n * o * oh * ow * c * kh * kw


def peak_gflops() -> float:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    times = []
    for _ in range(5):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * 2048**3 / min(times) / 1e9


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT.parent / "shared/reference/ofa-tiny-random"))
    ap.add_argument("--per-image", type=int, default=7, help="descriptions of the one image (RefCOCO: 7.2)")
    ap.add_argument("--size", default="640x480")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (eval's default workers use 1 each)")
    ap.add_argument("--iters", type=int, default=3)
    args = ap.parse_args()
    if not Path(args.model).exists():
        print(f"error: no model at {args.model} (pass --model, or put the project's shared/ beside it)",
              file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    w, h = (int(v) for v in args.size.split("x"))
    grounder = Grounder.from_pretrained(args.model, device="cpu", cache_mb=0)
    texts = [f"the {c} {s} on the {p}" for c, s, p in zip(["red", "blue", "green", "yellow"] * 3,
                                                            ["circle", "square", "triangle"] * 4,
                                                            ["left", "right", "top", "bottom"] * 3)]
    texts = (texts * math.ceil(args.per_image / len(texts)))[: args.per_image]
    with tempfile.TemporaryDirectory() as tmp:
        image = str(Path(tmp) / "scene.png")
        make_scene(random.Random(0), (w, h))[0].save(image)
        queries = [(image, t) for t in texts]
        grounder.predict_batch(queries)  # warm-up
        walls = []
        for _ in range(args.iters):
            start = time.perf_counter()
            grounder.predict_batch(queries)
            walls.append(time.perf_counter() - start)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
            grounder.predict_batch(queries)
    peak = peak_gflops()
    parts = {name: {"ms": 0.0, "gflop": 0.0} for name in ("matrix products", "fused attention", "convolutions",
                                                           "everything else")}
    for event in prof.events():  # each call, with its own time and shapes
        ms = event.self_cpu_time_total / 1e3
        shapes = [list(s) for s in event.input_shapes]
        if event.name in GEMM:
            part, flop = "matrix products", gemm_flops(event.name, shapes)
        elif event.name in ATTENTION:
            part, flop = "fused attention", attention_flops(shapes)
        elif event.name in CONV:
            values = getattr(event, "concrete_inputs", None) or []
            known = event.name == "mkldnn::_convolution_pointwise" and len(values) > 6
            part, flop = "convolutions", conv_flops(shapes, values) if known else 0.0
        else:
            part, flop = "everything else", 0.0
        parts[part]["ms"] += ms
        parts[part]["gflop"] += flop / 1e9
    total_ms = sum(p["ms"] for p in parts.values())
    print(f"{cpu_name()}, torch {torch.__version__}, {args.threads} thread(s); model {args.model}; "
          f"{args.per_image} descriptions of one {w}x{h} image, one predict_batch, feature cache off")
    print(f"wall time, median of {args.iters}: {1000 * statistics.median(walls):.1f} ms "
          f"({1000 * statistics.median(walls) / args.per_image:.1f} ms a description); "
          f"profiled operations: {total_ms:.1f} ms; peak (2048^3 product): {peak:.0f} GFLOP/s\n")
    print("| part | ms | share | GFLOP | GFLOP/s | of peak | at peak, ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    floor = 0.0
    for name, p in parts.items():
        rate = p["gflop"] / (p["ms"] / 1e3) if p["gflop"] else 0.0
        at_peak = 1e3 * p["gflop"] / peak if p["gflop"] else p["ms"]
        floor += at_peak
        print(f"| {name} | {p['ms']:.1f} | {100 * p['ms'] / total_ms:.0f} % | "
              + (f"{p['gflop']:.2f} | {rate:.0f} | {100 * rate / peak:.0f} % | {at_peak:.1f} |" if p["gflop"]
                 else f"- | - | - | {at_peak:.1f} (as measured) |"))
    print(f"\nwith the matrix products, attention and convolutions at the peak and the rest as measured: "
          f"{floor:.1f} ms, {total_ms / floor:.2f}x less than measured")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
