"""`ofa-ground bench`: latency, throughput, memory and cold start, ours beside the reference.

Every measurement runs in its own fresh process (so peak RSS and cold start belong to it alone) with the
same thread count. Scenarios, each timed as the median (min, max) of repeated runs:
- single: one image, one description;
- five: one image, five descriptions (ours: one backbone pass; the reference: five pipeline calls);
- batch16: 16 images of mixed sizes and modes with one description each (ours: `predict_batch`; the
  reference: 16 calls, since its batched call is slower and breaks beyond two samples).
Ours runs in each precision mode asked for (fp32 / bf16), with the feature cache off so repeated
runs do not reuse backbone outputs. The reference (ModelScope's pipeline) runs through the peer harness in
../shared/peer when its venv exists. Ratios are reference time / our time, measured in the same run.

This file is also the worker script: it imports nothing heavy at module level, so the peer venv's Python
(which does not have this package) can run it with `--worker reference`.
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
TEXTS = ("the red circle on the left", "a large blue square", "the green star below the circle",
         "the smallest object", "the yellow triangle to the right of the blue square")


def _peak_rss_mb() -> float:
    """Peak RSS since the last `_reset_peak()` (Linux: VmHWM), else since the process started."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak() -> None:
    try:  # Linux: writing 5 to clear_refs resets the peak-RSS counter
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _stats(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def _timed(fn, iters: int) -> dict[str, float]:
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return _stats(times)


def _plan(images: list[str], iters: int) -> dict:
    return {"single": (images[0], TEXTS[0], iters), "five": (images[0], list(TEXTS), max(3, iters // 2)),
            "batch16": ([(img, TEXTS[i % len(TEXTS)]) for i, img in enumerate(images[:16])], max(3, iters // 4))}


def box_overlap(a: list[float] | tuple[float, ...], b: list[float] | tuple[float, ...]) -> float:
    """IoU of two boxes with their corners put in order first (random-weight models often emit x1 < x0,
    which scoring counts as no box at all); identical boxes count 1 even with zero area."""
    from ofa_grounding.metrics import box_iou

    if all(abs(x - y) < 1e-3 for x, y in zip(a, b)):
        return 1.0
    order = lambda z: (min(z[0], z[2]), min(z[1], z[3]), max(z[0], z[2]), max(z[1], z[3]))  # noqa: E731
    return box_iou(order(a), order(b))


def agreement(g, cases_file: str) -> dict[str, float]:
    """Share of the reference cases where this Grounder gives the reference's tokens, and a box overlapping
    the reference's with IoU >= 0.9 (see `box_overlap`)."""
    doc = json.loads(Path(cases_file).read_text(encoding="utf-8"))
    cases = [c for c in doc["cases"] if "error" not in c]
    base = Path(cases_file).parent
    results = g.predict_batch([(base / c["image"], c["text"]) for c in cases])
    same = sum(list(r.tokens) == c["tokens"] for r, c in zip(results, cases))
    close = sum(box_overlap(r.box, c["box"]) >= 0.9 for r, c in zip(results, cases))
    return {"cases": len(cases), "same_tokens": same / len(cases), "iou90": close / len(cases)}


def worker_ours(model: str, images: list[str], iters: int, threads: int, dtype: str, device: str,
                cases: str | None = None) -> dict:
    import torch

    torch.set_num_threads(threads)
    from ofa_grounding import Grounder

    t = time.perf_counter()
    g = Grounder.from_pretrained(model, dtype=dtype, device=device, cache_mb=0)  # default batch_size 8
    load = time.perf_counter() - t
    plan = _plan(images, iters)
    image, text, n = plan["single"]
    first = g.predict(image, text)
    cold = time.perf_counter() - T_PROCESS
    out = {"impl": f"ours {dtype}", "cold_start_s": cold, "load_s": load, "box": list(first.box)}
    out["single"] = _timed(lambda: g.predict(image, text), n)
    out["peak_rss_mb"] = _peak_rss_mb()  # single queries: process start to here
    image, texts, n = plan["five"]
    _reset_peak()
    out["five"] = _timed(lambda: g.predict(image, texts), n)
    out["peak_rss_five_mb"] = _peak_rss_mb()
    items, n = plan["batch16"]
    _reset_peak()
    g.predict_batch(items)  # warm-up for the larger shapes
    out["batch16"] = _timed(lambda: g.predict_batch(items), n)
    out["peak_rss_batch16_mb"] = _peak_rss_mb()
    out["torch"] = torch.__version__
    if cases:
        out["agreement"] = agreement(g, cases)  # after the RSS reading: it batches 73 queries
    return out


def drop_package_dir_from_path() -> None:
    """Remove this package's own folder from sys.path (it is there when this file runs as a script): its
    modules would shadow top-level packages the reference imports (our `fairseq.py` shadowed `fairseq`)."""
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]


def worker_reference(model: str, images: list[str], iters: int, threads: int, peer_dir: str) -> dict:
    drop_package_dir_from_path()
    sys.path.insert(0, peer_dir)
    sys.argv = sys.argv[:1]
    import run_modelscope_vg as rmv  # the peer harness: offline settings, shims, modelscope imports
    import torch

    torch.set_num_threads(threads)
    t = time.perf_counter()
    p = rmv.pipeline(rmv.Tasks.visual_grounding, model=os.path.abspath(model), device="cpu")
    load = time.perf_counter() - t
    plan = _plan(images, iters)
    image, text, n = plan["single"]
    first = p({"image": image, "text": text})
    cold = time.perf_counter() - T_PROCESS
    out = {"impl": "reference", "cold_start_s": cold, "load_s": load, "box": [float(v) for v in first["boxes"][0]]}
    out["single"] = _timed(lambda: p({"image": image, "text": text}), n)
    out["peak_rss_mb"] = _peak_rss_mb()
    image, texts, n = plan["five"]
    _reset_peak()
    out["five"] = _timed(lambda: [p({"image": image, "text": t}) for t in texts], n)
    out["peak_rss_five_mb"] = _peak_rss_mb()
    items, n = plan["batch16"]
    _reset_peak()
    out["batch16"] = _timed(lambda: [p({"image": i, "text": t}) for i, t in items], n)
    out["peak_rss_batch16_mb"] = _peak_rss_mb()
    out["torch"] = torch.__version__
    return out


def _cpu_name() -> str:
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


def _cases_for(model: str, cases: str) -> str:
    """The cases file if it was made with this model (cases.json names its model folder), else ''."""
    try:
        doc = json.loads(Path(cases).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    made_with = (Path(cases).parent / doc.get("model_dir", "")).resolve()
    return cases if made_with == Path(model).resolve() else ""


def _run(cmd: list[str], env: dict | None = None) -> dict | None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, env=env)
    if proc.returncode != 0:
        print(f"worker failed: {' '.join(cmd[:4])} ...\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def format_table(rows: list[dict], ref: dict | None, header: str) -> str:
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
        line(f"{names[key]}, median", lambda r, k=key: r[k]["median"], "ms", 1000)
        line("  min / max", lambda r, k=key: r[k]["min"], "ms", 1000)
        line("", lambda r, k=key: r[k]["max"], "ms", 1000)
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ofa-ground bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    return run(ap.parse_args(argv))


def add_arguments(ap: argparse.ArgumentParser) -> None:
    shared = Path(__file__).resolve().parents[3] / "shared"  # src layout: the repository's sibling folder
    ap.add_argument("--model", default=str(shared / "reference" / "ofa-tiny-random"),
                    help="model directory (default: ../shared/reference/ofa-tiny-random)")
    ap.add_argument("--images", default=str(shared / "reference" / "images"),
                    help="folder of images for the scenarios (default: ../shared/reference/images)")
    ap.add_argument("--dtypes", default="fp32,bf16", help="our precision modes (default fp32,bf16)")
    ap.add_argument("--iters", type=int, default=10, help="single-query repetitions (>= 10)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--peer-python", default=str(shared.parent / "peer-venv" / "bin" / "python"),
                    help="the peer venv's python (default ../peer-venv/bin/python)")
    ap.add_argument("--peer-dir", default=str(shared / "peer"))
    ap.add_argument("--cases", default=str(shared / "reference" / "cases.json"),
                    help="reference cases for the precision agreement (default ../shared/reference/cases.json; "
                         "only used with the model they were made with)")
    ap.add_argument("--no-reference", action="store_true", help="skip the reference even if available")
    ap.add_argument("--json", action="store_true", help="print the raw measurements as JSON too")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--image-list", help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    if args.worker:
        images = json.loads(args.image_list)
        if args.worker == "reference":
            out = worker_reference(args.model, images, args.iters, args.threads, args.peer_dir)
        else:
            out = worker_ours(args.model, images, args.iters, args.threads, args.worker, args.device,
                              args.cases or None)
        print(json.dumps(out))
        return 0
    if args.iters < 10:
        print("ofa-ground: error: --iters must be at least 10", file=sys.stderr)
        return 2
    dtypes = [d for d in args.dtypes.split(",") if d]
    bad = [d for d in dtypes if d not in ("fp32", "bf16")]
    if bad or not dtypes:
        print(f"ofa-ground: error: --dtypes: unknown mode(s) {bad}", file=sys.stderr)
        return 2
    for path, what in ((args.model, "--model"), (args.images, "--images")):
        if not Path(path).is_dir():
            print(f"ofa-ground: error: {what} {path}: not a folder", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory() as tmp:
        images = mixed_images(Path(args.images), Path(tmp))
        common = [__file__, "--model", str(args.model), "--iters", str(args.iters), "--threads", str(args.threads),
                  "--image-list", json.dumps(images)]
        cases = _cases_for(args.model, args.cases)
        rows = []
        for dtype in dtypes:
            print(f"measuring ours, {dtype} ...", file=sys.stderr)
            r = _run([sys.executable, *common, "--worker", dtype, "--device", args.device, "--cases", cases])
            if r:
                rows.append(r)
        ref = None
        if not args.no_reference and Path(args.peer_python).exists():
            print("measuring the reference ...", file=sys.stderr)
            ref = _run([args.peer_python, *common, "--worker", "reference", "--peer-dir", args.peer_dir])
        elif not args.no_reference:
            print(f"(reference skipped: no peer venv at {args.peer_python}; "
                  "create it with `bash ../shared/peer/setup_venv.sh`)", file=sys.stderr)
    if not rows:
        return 1
    header = (f"machine: {_cpu_name()}, {os.cpu_count()} cores, {args.threads} threads; torch {rows[0]['torch']}; "
              f"model {Path(args.model).name}; device {args.device}")
    print(format_table(rows, ref, header))
    if ref:
        fp32 = next((r for r in rows if r["impl"].endswith("fp32")), None)
        if fp32:
            same = all(abs(a - b) < 1e-3 for a, b in zip(fp32["box"], ref["box"]))
            print(f"fp32 single-query box equals the reference's: {same}")
    if args.json:
        print(json.dumps({"ours": rows, "reference": ref}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
