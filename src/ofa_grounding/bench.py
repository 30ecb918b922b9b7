"""`ofa-ground bench`: latency, throughput, memory and cold start of this package, in its precision modes.

Every measurement runs in its own fresh process (so peak RSS and cold start belong to it alone) with the
same thread count. Scenarios, each timed as the median (min, max) of repeated runs:
- single: one image, one description;
- five: one image, five descriptions (one backbone pass);
- batch16: 16 images of mixed sizes and modes with one description each (`predict_batch`).
The feature cache is off, so repeated runs do not reuse backbone outputs. Without --model, the bundled demo
model; without --images, 16 synthetic scenes of mixed sizes and modes. The comparison with the reference
(ModelScope's pipeline) is benchmarks/bench.py in the repository, which adds its column and the ratios.
"""

from __future__ import annotations

import time

T_PROCESS = time.perf_counter()  # before heavy imports: cold start counts them

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

SCENARIOS = ("single", "five", "batch16")
FEW_ITERS = 5  # fewer single-query runs than this: warn that the medians are noisy
TEXTS = ("the red circle on the left", "a large blue square", "the green star below the circle",
         "the smallest object", "the yellow triangle to the right of the blue square")


def peak_rss_mb() -> float:
    """Peak RSS since the last `reset_peak()` (Linux: VmHWM), else since the process started."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak() -> None:
    try:  # Linux: writing 5 to clear_refs resets the peak-RSS counter
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def stats(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def timed(fn, iters: int) -> dict[str, float]:
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return stats(times)


def plan(images: list[str], iters: int) -> dict:
    """What each scenario runs: (image(s), text(s), repetitions). The heavier scenarios repeat half and a
    quarter as often, at least 3 times (or `iters` times when that is fewer)."""
    least = min(iters, 3)
    return {"single": (images[0], TEXTS[0], iters), "five": (images[0], list(TEXTS), max(least, iters // 2)),
            "batch16": ([(img, TEXTS[i % len(TEXTS)]) for i, img in enumerate(images[:16])],
                        max(least, iters // 4))}


def worker_ours(model: str | None, images: list[str], iters: int, threads: int, precision: str,
                device: str) -> tuple:
    """Measure this package in the current process; returns (the row, the loaded Grounder)."""
    import torch

    torch.set_num_threads(threads)
    from ofa_grounding import Grounder

    t = time.perf_counter()
    g = Grounder.from_pretrained(model, precision=precision, device=device, cache_mb=0)  # default batch_size 8
    load = time.perf_counter() - t
    scenarios = plan(images, iters)
    image, text, n = scenarios["single"]
    first = g.predict(image, text)
    cold = time.perf_counter() - T_PROCESS
    out = {"impl": f"ours {precision}", "cold_start_s": cold, "load_s": load, "box": list(first.box)}
    out["single"] = timed(lambda: g.predict(image, text), n)
    out["peak_rss_mb"] = peak_rss_mb()  # single queries: process start to here
    image, texts, n = scenarios["five"]
    reset_peak()
    out["five"] = timed(lambda: g.predict(image, texts), n)
    out["peak_rss_five_mb"] = peak_rss_mb()
    items, n = scenarios["batch16"]
    reset_peak()
    g.predict_batch(items)  # warm-up for the larger shapes
    out["batch16"] = timed(lambda: g.predict_batch(items), n)
    out["peak_rss_batch16_mb"] = peak_rss_mb()
    out["torch"] = torch.__version__
    return out, g


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def mixed_images(source: Path, out: Path, count: int = 16) -> list[str]:
    """`count` distinct image files of mixed sizes and modes: the source folder's images, then mirrored
    copies of them until there are enough."""
    from PIL import Image, ImageOps

    files = sorted(p for p in source.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
    if not files:
        raise ValueError(f"no images in {source}")
    paths = [str(p) for p in files[:count]]
    k = 0
    while len(paths) < count:
        src = files[k % len(files)]
        dst = out / f"mirrored_{k}_{src.stem}.png"
        with Image.open(src) as im:
            ImageOps.mirror(ImageOps.exif_transpose(im)).save(dst)
        paths.append(str(dst))
        k += 1
    return paths


# Sizes and modes of the default image set: photos' shapes, small and large, colour and not.
_SCENE_SIZES = ((640, 480), (480, 640), (1024, 768), (256, 256), (800, 600), (300, 500), (1280, 720), (512, 512))
_SCENE_MODES = ("RGB", "RGB", "L", "RGBA")


def synthetic_images(out: Path, count: int = 16) -> list[str]:
    """`count` synthetic scenes of mixed sizes and modes, written to `out` (the default image set)."""
    import random

    from ofa_grounding.synthetic import make_scene

    rng = random.Random(0)
    paths = []
    for i in range(count):
        image, _ = make_scene(rng, _SCENE_SIZES[i % len(_SCENE_SIZES)])
        path = out / f"scene_{i:02d}.png"
        image.convert(_SCENE_MODES[i % len(_SCENE_MODES)]).save(path)
        paths.append(str(path))
    return paths


def run_worker(cmd: list[str], env: dict | None = None) -> dict | None:
    """Run a measuring process; its last stdout line is its JSON row (None, with its stderr shown, on failure)."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, env=env)
    if proc.returncode != 0:
        print(f"worker failed: {' '.join(cmd[:4])} ...\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def format_table(rows: list[dict], ref: dict | None, header: str) -> str:
    """The measurements side by side; with `ref` (benchmarks/bench.py), its column and ref/ours ratios."""
    cols = [r["impl"] for r in rows] + (["reference"] if ref else [])
    lines = [header, f"{'':34}" + "".join(f"{c:>13}" for c in cols) +
             ("   " + "".join(f"{'ref/' + r['impl'].split()[-1]:>11}" for r in rows) if ref else "")]
    everyone = rows + ([ref] if ref else [])

    def line(label: str, get, unit: str, scale: float, ratio: bool = True) -> None:
        vals = [get(r) for r in everyone]
        text = f"{label:34}" + "".join(f"{v * scale:>11.1f}{unit}" for v in vals)
        if ref and ratio:
            text += "   " + "".join(f"{get(ref) / get(r):>10.2f}x" if get(r) else f"{'-':>11}" for r in rows)
        lines.append(text)

    names = {"single": "single query", "five": "5 descriptions, one image", "batch16": "16 mixed images"}
    for key in SCENARIOS:
        runs = {r[key]["n"] for r in everyone}
        of = f" of {runs.pop()} runs" if len(runs) == 1 else ""
        line(f"{names[key]}, median{of}", lambda r, k=key: r[k]["median"], "ms", 1000)
        line("  min", lambda r, k=key: r[k]["min"], "ms", 1000)
        line("  max", lambda r, k=key: r[k]["max"], "ms", 1000)
    line("5 descriptions: per description", lambda r: r["five"]["median"] / 5, "ms", 1000)
    line("16 images: per image", lambda r: r["batch16"]["median"] / 16, "ms", 1000)
    line("model load", lambda r: r["load_s"], "s ", 1)
    line("cold start to first box", lambda r: r["cold_start_s"], "s ", 1)
    line("peak RSS, single queries", lambda r: r["peak_rss_mb"], "MB", 1)
    line("peak RSS, 5 descriptions", lambda r: r.get("peak_rss_five_mb", 0.0), "MB", 1)
    line("peak RSS, 16 images", lambda r: r.get("peak_rss_batch16_mb", 0.0), "MB", 1)
    if any("agreement" in r for r in rows):
        lines.append("agreement with the reference's fp32 answers (reference cases):")
        for r in rows:
            a = r.get("agreement")
            if a:
                lines.append(f"  {r['impl']:10} same 4 tokens {100 * a['same_tokens']:5.1f} %, box IoU >= 0.9 "
                             f"{100 * a['iou90']:5.1f} %  ({a['cases']} cases)")
    return "\n".join(lines)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--model", help="a model directory, a bundled model's name or a hub id, as predict --model takes "
                                    "(default: the bundled demo model)")
    ap.add_argument("--images", help="folder of images for the scenarios (default: 16 synthetic scenes of mixed "
                                     "sizes and modes)")
    from .cli.common import deprecated_alias

    precisions = ap.add_argument("--precisions", default="fp32,bf16", help="precision modes (default fp32,bf16)")
    deprecated_alias(ap, "--dtypes", precisions)
    ap.add_argument("--iters", type=int, default=10,
                    help="single-query repetitions (default 10; at least 1, but medians of fewer than "
                         f"{FEW_ITERS} are noisy); the other scenarios repeat half and a quarter as often")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of every measured process")
    ap.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    ap.add_argument("--json", action="store_true", help="print the raw measurements as JSON too")


def check_arguments(args: argparse.Namespace) -> str | None:
    """The first problem with the arguments, as a one-line message, or None."""
    if args.iters < 1:
        return f"--iters must be at least 1, got {args.iters}"
    precisions = [p for p in args.precisions.split(",") if p]
    bad = [p for p in precisions if p not in ("fp32", "bf16")]
    if bad or not precisions:
        return f"--precisions: unknown mode(s) {bad}"
    for path, what in ((args.model, "--model"), (args.images, "--images")):
        if path is not None and not Path(path).is_dir():
            return f"{what} {path}: not a folder"
    return None


def noisy_warning(args: argparse.Namespace) -> str | None:
    """A one-line warning when the arguments give unreliable numbers, or None."""
    if args.iters < FEW_ITERS:
        return f"--iters {args.iters}: medians over fewer than {FEW_ITERS} runs are noisy"
    return None


def image_set(images: str | None, tmp: Path) -> list[str]:
    return mixed_images(Path(images), tmp) if images else synthetic_images(tmp)


def header(args: argparse.Namespace, rows: list[dict]) -> str:
    return (f"machine: {cpu_name()}, {os.cpu_count()} cores, {args.threads} threads; torch {rows[0]['torch']}; "
            f"model {Path(args.model).name if args.model else 'demo (bundled)'}; device {args.device}")


def run(args: argparse.Namespace) -> int:
    problem = check_arguments(args)
    if problem:
        print(f"ofa-ground: error: {problem}", file=sys.stderr)
        return 2
    if warning := noisy_warning(args):
        print(f"ofa-ground: warning: {warning}", file=sys.stderr)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        images = image_set(args.images, Path(tmp))
        for precision in [p for p in args.precisions.split(",") if p]:
            print(f"measuring ours, {precision} ...", file=sys.stderr)
            cmd = [sys.executable, "-m", "ofa_grounding.bench", "--worker", precision, "--iters", str(args.iters),
                   "--threads", str(args.threads), "--device", args.device, "--image-list", json.dumps(images)]
            r = run_worker(cmd + (["--model", args.model] if args.model else []))
            if r:
                rows.append(r)
    if not rows:
        return 1
    print(format_table(rows, None, header(args, rows)))
    if args.json:
        print(json.dumps({"ours": rows}, indent=1))
    return 0


def _worker_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", required=True)
    ap.add_argument("--model")
    ap.add_argument("--image-list", required=True)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args(argv)
    row, _ = worker_ours(a.model, json.loads(a.image_list), a.iters, a.threads, a.worker, a.device)
    print(json.dumps(row))
    return 0


if __name__ == "__main__":  # the measuring process `run` starts
    sys.exit(_worker_main(sys.argv[1:]))
