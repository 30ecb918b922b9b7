"""ONNX (onnxruntime) beside torch on the reference cases: token agreement and single-query latency.

    python benchmarks/onnx_latency.py [--model ../shared/reference/ofa-tiny-random] [--onnx DIR] [--iters 10]

Exports the model (unless --onnx names an existing export), then, in this one process with 2 threads
for both runtimes: every reference case through both (same 4 tokens as the reference's answer?), and
the median / min / max of --iters single queries on one image for each.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ofa_grounding import Grounder
from ofa_grounding.checkpoint import read_checkpoint
from ofa_grounding.onnx_export import export_onnx, onnx_grounder

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(REFERENCE / "ofa-tiny-random"))
    ap.add_argument("--onnx", type=Path, help="an existing export-onnx folder (default: export to a temp folder)")
    ap.add_argument("--cases", type=Path, default=REFERENCE / "cases.json")
    ap.add_argument("--iters", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(2)
    folder = args.onnx
    if folder is None:
        folder = Path(tempfile.mkdtemp(prefix="ofa-onnx-"))
        t0 = time.perf_counter()
        export_onnx(read_checkpoint(args.model), folder)
        print(f"export: {time.perf_counter() - t0:.1f} s -> {folder}")
    runtimes = {"torch": Grounder.from_pretrained(args.model, cache_mb=0),
                "onnxruntime": onnx_grounder(folder, threads=2, cache_mb=0)}
    cases = json.loads(args.cases.read_text())["cases"]
    base = args.cases.parent
    print(f"{'':<12} {'same tokens as the reference':>30} {'median ms':>10} {'min':>8} {'max':>8}")
    for name, g in runtimes.items():
        same = sum(list(g.predict(base / c["image"], c["text"]).tokens) == c["tokens"] for c in cases)
        image, text = base / cases[0]["image"], cases[0]["text"]
        g.predict(image, text)  # warm-up
        times = []
        for i in range(args.iters):
            t0 = time.perf_counter()
            g.predict(image, f"{text} {i}")
            times.append((time.perf_counter() - t0) * 1e3)
        print(f"{name:<12} {f'{same}/{len(cases)}':>30} {statistics.median(times):>10.1f} {min(times):>8.1f} "
              f"{max(times):>8.1f}")


if __name__ == "__main__":
    main()
