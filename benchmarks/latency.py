#!/usr/bin/env python
"""Single-query latency of ofa-grounding, side by side with the reference (modelscope) when available.

    python benchmarks/latency.py [--iters 20] [--model DIR] [--peer-python ../peer-venv/bin/python]

Each implementation runs in its own fresh process (so peak RSS and cold start are its own), with 2
torch threads, on the same image and text. Reported per implementation: cold start (process start ->
imports -> model load -> first box), load time alone, then median/min/max over --iters repeated single
queries, split into preprocessing (image decode + resize + tokenize), backbone+encoder, and decoding
(beam search + box), and peak RSS. The ratio column is reference / ours, measured in the same run.
The reference side needs the peer venv (`bash ../shared/peer/setup_venv.sh`); without it only our
numbers are printed.
"""

from __future__ import annotations

import time

T_PROCESS = time.perf_counter()  # before heavy imports: cold start counts them

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
# The helpers of `ofa-ground bench`: that module imports only the standard library at load time, so the
# peer venv (which does not have this package) can import it from the repository's src/ too.
try:
    from ofa_grounding.bench import cpu_name as _cpu_name
    from ofa_grounding.bench import peak_rss_mb as _peak_rss_mb
    from ofa_grounding.bench import stats as _stats
except ImportError:
    sys.path.insert(0, str(ROOT / "src"))
    from ofa_grounding.bench import cpu_name as _cpu_name
    from ofa_grounding.bench import peak_rss_mb as _peak_rss_mb
    from ofa_grounding.bench import stats as _stats

DEFAULT_MODEL = SHARED / "reference" / "ofa-tiny-random"
DEFAULT_IMAGE = SHARED / "reference" / "images" / "scene_640x480.png"
DEFAULT_TEXT = "the red circle on the left"






def worker_ours(model: str, image: str, text: str, iters: int) -> dict:
    import torch

    torch.set_num_threads(2)
    from ofa_grounding import Grounder

    t = time.perf_counter()
    g = Grounder.from_pretrained(model)
    load = time.perf_counter() - t

    def query() -> tuple[float, float, float, object]:
        t0 = time.perf_counter()
        rgb = g.load_image(image)
        pixels = g.image_tensor(rgb)
        ids, cut = g.tokenize_text(text)
        t1 = time.perf_counter()
        features, grid = g.model.image_features(pixels.unsqueeze(0))  # the backbone, no feature cache
        enc, src_len = g.encode_texts(features, grid, [ids])
        t2 = time.perf_counter()
        result = g.decode(enc, src_len, [rgb.size], [text], [cut])[0]
        t3 = time.perf_counter()
        return t1 - t0, t2 - t1, t3 - t2, result

    first = query()
    cold = time.perf_counter() - T_PROCESS
    parts = [query() for _ in range(iters)]
    return {"impl": "ofa-grounding", "cold_start_s": cold, "load_s": load, "box": list(first[3].box),
            "total": _stats([a + b + c for a, b, c, _ in parts]), "preprocess": _stats([p[0] for p in parts]),
            "encoder": _stats([p[1] for p in parts]), "decode": _stats([p[2] for p in parts]),
            "peak_rss_mb": _peak_rss_mb(), "torch": torch.__version__}


def worker_reference(model: str, image: str, text: str, iters: int) -> dict:
    peer = SHARED / "peer"
    sys.path.insert(0, str(peer))
    sys.argv = sys.argv[:1]
    import run_modelscope_vg as rmv  # the peer harness: offline settings, shims, modelscope imports
    import torch

    torch.set_num_threads(2)
    t = time.perf_counter()
    p = rmv.pipeline(rmv.Tasks.visual_grounding, model=os.path.abspath(model), device="cpu")
    load = time.perf_counter() - t

    # Stage split: the pipeline's preprocess, and the encoder / generator inside its forward.
    stages: dict[str, float] = {}
    encoder = p.model.model.encoder
    generator = p.model.generator

    def timed(name, fn):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            out = fn(*a, **k)
            stages[name] = stages.get(name, 0.0) + time.perf_counter() - t0
            return out
        return wrapper

    encoder.forward = timed("encoder", encoder.forward)
    generator.generate = timed("generate", generator.generate)
    p.preprocess = timed("preprocess", p.preprocess)

    def query() -> tuple[float, dict]:
        stages.clear()
        t0 = time.perf_counter()
        out = p({"image": image, "text": text})
        return time.perf_counter() - t0, dict(stages), out

    first = query()
    cold = time.perf_counter() - T_PROCESS
    parts = [query() for _ in range(iters)]
    return {"impl": "reference (modelscope)", "cold_start_s": cold, "load_s": load, "box": first[2]["boxes"][0],
            "total": _stats([x[0] for x in parts]), "preprocess": _stats([x[1]["preprocess"] for x in parts]),
            "encoder": _stats([x[1]["encoder"] for x in parts]),
            "decode": _stats([x[1]["generate"] - x[1]["encoder"] for x in parts]),
            "peak_rss_mb": _peak_rss_mb(), "torch": torch.__version__}




def run_worker(python: str, which: str, args: argparse.Namespace) -> dict | None:
    cmd = [python, __file__, "--worker", which, "--model", str(args.model), "--image", str(args.image),
           "--text", args.text, "--iters", str(args.iters)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        print(f"{which} worker failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(DEFAULT_MODEL))
    ap.add_argument("--image", default=str(DEFAULT_IMAGE))
    ap.add_argument("--text", default=DEFAULT_TEXT)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--peer-python", default=str(ROOT.parent / "peer-venv" / "bin" / "python"))
    ap.add_argument("--no-reference", action="store_true", help="skip the reference even if available")
    ap.add_argument("--json", action="store_true", help="print the raw measurements as JSON too")
    ap.add_argument("--worker", choices=["ours", "reference"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.iters < 10:
        ap.error("--iters must be at least 10")
    if args.worker:
        fn = worker_ours if args.worker == "ours" else worker_reference
        print(json.dumps(fn(args.model, args.image, args.text, args.iters)))
        return 0

    ours = run_worker(sys.executable, "ours", args)
    ref = None
    if not args.no_reference and Path(args.peer_python).exists():
        ref = run_worker(args.peer_python, "reference", args)
    elif not args.no_reference:
        print(f"(reference skipped: no peer venv at {args.peer_python}; "
              "create it with `bash ../shared/peer/setup_venv.sh`)", file=sys.stderr)
    if ours is None:
        return 1

    print(f"machine: {_cpu_name()}, {os.cpu_count()} cores; "
          f"torch {ours['torch']}, 2 threads; {args.iters} queries; image {Path(args.image).name}")
    head = f"{'':28} {'ours':>10}" + (f" {'reference':>10} {'ratio':>7}" if ref else "")
    print(head)

    def row(label: str, a: float, b: float | None, unit: str = "ms", scale: float = 1000) -> None:
        line = f"{label:28} {a * scale:>8.1f}{unit}"
        if b is not None:
            line += f" {b * scale:>8.1f}{unit} {b / a:>6.2f}x"
        print(line)

    for key, label in (("total", "single query"), ("preprocess", "  preprocessing"),
                       ("encoder", "  backbone + encoder"), ("decode", "  decoding")):
        for stat in ("median", "min", "max") if key == "total" else ("median",):
            row(f"{label} {stat}", ours[key][stat], ref[key][stat] if ref else None)
    row("load (excluded above)", ours["load_s"], ref["load_s"] if ref else None, "s ", 1)
    row("cold start to first box", ours["cold_start_s"], ref["cold_start_s"] if ref else None, "s ", 1)
    row("peak RSS", ours["peak_rss_mb"], ref["peak_rss_mb"] if ref else None, "MB", 1)
    if ref:
        same = all(abs(a - b) < 1e-3 for a, b in zip(ours["box"], ref["box"]))
        print(f"same box as the reference: {same}")
    if args.json:
        print(json.dumps({"ours": ours, "reference": ref}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
