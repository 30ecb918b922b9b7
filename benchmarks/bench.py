"""Ours beside the reference: `ofa-ground bench`'s scenarios (src/ofa_grounding/bench.py) for our precision
modes, plus ModelScope's pipeline through the peer harness in ../shared/peer when its venv exists, with the
ratios reference time / our time measured in the same run and, for the reference fixture, how often each
mode gives the reference's fp32 answers.

    .venv/bin/python benchmarks/bench.py                 (defaults: ../shared/reference's random OFA-tiny)
    .venv/bin/python benchmarks/bench.py --no-reference --model DIR --images DIR

The reference runs this same file with the peer venv's Python (`--worker reference`), which does not have
this package installed: everything it needs is imported from the repository's src/ folder, stdlib only.
"""

from __future__ import annotations

import time

T_PROCESS = time.perf_counter()  # before heavy imports: cold start counts them

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
try:
    from ofa_grounding import bench as ours
except ImportError:  # the peer venv's Python: this repository's sources, stdlib-only at import time
    sys.path.insert(0, str(ROOT / "src"))
    from ofa_grounding import bench as ours


def agreement(g, cases_file: str) -> dict[str, float]:
    """Share of the reference cases where this Grounder gives the reference's tokens, and a box overlapping
    the reference's with IoU >= 0.9 (`metrics.box_overlap`)."""
    from ofa_grounding.metrics import box_overlap

    doc = json.loads(Path(cases_file).read_text(encoding="utf-8"))
    cases = [c for c in doc["cases"] if "error" not in c]
    base = Path(cases_file).parent
    results = g.predict_batch([(base / c["image"], c["text"]) for c in cases])
    same = sum(list(r.tokens) == c["tokens"] for r, c in zip(results, cases))
    close = sum(box_overlap(r.box, c["box"]) >= 0.9 for r, c in zip(results, cases))
    return {"cases": len(cases), "same_tokens": same / len(cases), "iou90": close / len(cases)}


def worker_ours(model: str, images: list[str], iters: int, threads: int, precision: str, device: str,
                cases: str | None) -> dict:
    row, g = ours.worker_ours(model, images, iters, threads, precision, device)
    if cases:
        row["agreement"] = agreement(g, cases)  # after the RSS readings: it batches 73 queries
    return row


def worker_reference(model: str, images: list[str], iters: int, threads: int, peer_dir: str) -> dict:
    sys.path.insert(0, peer_dir)
    sys.argv = sys.argv[:1]
    import run_modelscope_vg as rmv  # the peer harness: offline settings, shims, modelscope imports
    import torch

    torch.set_num_threads(threads)
    t = time.perf_counter()
    p = rmv.pipeline(rmv.Tasks.visual_grounding, model=os.path.abspath(model), device="cpu")
    load = time.perf_counter() - t
    plan = ours.plan(images, iters)
    image, text, n = plan["single"]
    first = p({"image": image, "text": text})
    cold = time.perf_counter() - T_PROCESS
    out = {"impl": "reference", "cold_start_s": cold, "load_s": load, "box": [float(v) for v in first["boxes"][0]]}
    out["single"] = ours.timed(lambda: p({"image": image, "text": text}), n)
    out["peak_rss_mb"] = ours.peak_rss_mb()
    image, texts, n = plan["five"]
    ours.reset_peak()
    out["five"] = ours.timed(lambda: [p({"image": image, "text": t}) for t in texts], n)
    out["peak_rss_five_mb"] = ours.peak_rss_mb()
    items, n = plan["batch16"]
    ours.reset_peak()
    out["batch16"] = ours.timed(lambda: [p({"image": i, "text": t}) for i, t in items], n)
    out["peak_rss_batch16_mb"] = ours.peak_rss_mb()
    out["torch"] = torch.__version__
    return out


def cases_for(model: str, cases: str) -> str:
    """The cases file if it was made with this model (cases.json names its model folder), else ''."""
    try:
        doc = json.loads(Path(cases).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    made_with = (Path(cases).parent / doc.get("model_dir", "")).resolve()
    return cases if made_with == Path(model).resolve() else ""


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ours.add_arguments(ap)
    # ../shared's images only where they exist (a clone with nothing beside it measures on synthetic scenes)
    shared_images = SHARED / "reference" / "images"
    ap.set_defaults(model=str(SHARED / "reference" / "ofa-tiny-random"),
                    images=str(shared_images) if shared_images.is_dir() else None)
    ap.add_argument("--peer-python", default=str(SHARED.parent / "peer-venv" / "bin" / "python"),
                    help="the peer venv's python (default ../peer-venv/bin/python)")
    ap.add_argument("--peer-dir", default=str(SHARED / "peer"))
    ap.add_argument("--cases", default=str(SHARED / "reference" / "cases.json"),
                    help="reference cases for the precision agreement (default ../shared/reference/cases.json; "
                         "only used with the model they were made with)")
    ap.add_argument("--no-reference", action="store_true", help="skip the reference even if available")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--image-list", help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker:
        images = json.loads(args.image_list)
        if args.worker == "reference":
            out = worker_reference(args.model, images, args.iters, args.threads, args.peer_dir)
        else:
            out = worker_ours(args.model, images, args.iters, args.threads, args.worker, args.device,
                              args.cases or None)
        print(json.dumps(out))
        return 0
    problem = ours.check_arguments(args)
    if problem:
        print(f"bench.py: error: {problem}", file=sys.stderr)
        return 2
    if warning := ours.noisy_warning(args):
        print(f"bench.py: warning: {warning}", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        images = ours.image_set(args.images, Path(tmp))
        common = [__file__, "--model", str(args.model), "--iters", str(args.iters), "--threads", str(args.threads),
                  "--image-list", json.dumps(images)]
        cases = cases_for(args.model, args.cases)
        rows = []
        for precision in [p for p in args.precisions.split(",") if p]:
            print(f"measuring ours, {precision} ...", file=sys.stderr)
            r = ours.run_worker([sys.executable, *common, "--worker", precision, "--device", args.device,
                                 "--cases", cases])
            if r:
                rows.append(r)
        ref = None
        if not args.no_reference and Path(args.peer_python).exists():
            print("measuring the reference ...", file=sys.stderr)
            ref = ours.run_worker([args.peer_python, *common, "--worker", "reference", "--peer-dir", args.peer_dir])
        elif not args.no_reference:
            print(f"(reference skipped: no peer venv at {args.peer_python}; "
                  "create it with `bash ../shared/peer/setup_venv.sh`)", file=sys.stderr)
    if not rows:
        return 1
    print(ours.format_table(rows, ref, ours.header(args, rows)))
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
