#!/usr/bin/env python
"""A RefCOCO-val-shaped collection, ours against the reference: `ofa-ground eval` and `ofa-ground predict --jsonl
--out` with their default settings (and with any extra settings given), against ModelScope's pipeline called once
per description (the only way it takes a collection), all in one run, with the ratios reference / ours and how
many of our boxes equal the reference's.

    .venv/bin/python benchmarks/collection_vs_reference.py [--images 60] [--per-image 7] [--model DIR]
        [--ours "--workers 1 --threads 2"] ...          # more settings of ours to time beside the defaults

The collection: RefCOCO's val split has 1,500 images and 10,834 descriptions (7.2 a image), COCO photos of about
640x480; here N synthetic scenes of COCO's common sizes (640x480, 640x427, 480x640, 500x375, 640x360, 427x640),
noisy, with shapes drawn on them, K descriptions each, one JSONL row per description with a box (eval needs one;
with the default random-weight OFA-tiny of ../shared/reference the accuracy means nothing). Each of ours is one
fresh CLI process, timed from start to exit (model load and image decoding included); the reference is timed
from before its pipeline is built to its last answer, in the peer venv (../peer-venv, `bash
../shared/peer/setup_venv.sh`) with its own default of 2 torch threads. The reference runs this file with the
peer venv's Python (`--reference-worker`): stdlib, numpy, Pillow and the peer harness only.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SIZES = [(640, 480), (640, 427), (480, 640), (500, 375), (640, 360), (427, 640)]
COLOURS = {"red": (200, 30, 30), "green": (30, 160, 30), "blue": (30, 30, 200), "yellow": (220, 200, 30)}
PLACES = ["on the left", "on the right", "at the top", "at the bottom", "in the middle"]


def write_collection(folder: Path, images: int, per_image: int, seed: int) -> Path:
    import numpy as np
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    noise = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(images):
        w, h = SIZES[i % len(SIZES)]
        pixels = noise.integers(90, 200, size=(h, w, 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
        draw = ImageDraw.Draw(image)
        shapes = []
        for _ in range(per_image):
            colour = rng.choice(list(COLOURS))
            x0, y0 = rng.randrange(0, w - 60), rng.randrange(0, h - 60)
            box = (x0, y0, x0 + rng.randrange(30, min(200, w - x0)), y0 + rng.randrange(30, min(200, h - y0)))
            shape = rng.choice(["circle", "square"])
            (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=COLOURS[colour])
            shapes.append((f"the {colour} {shape} {rng.choice(PLACES)}", box))
        name = f"images/coco_like_{i:04d}.jpg"
        image.save(folder / name, quality=90)
        rows += [{"image": name, "text": text, "box": list(box)} for text, box in shapes]
    path = folder / "val.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def reference_worker(model: str, rows_file: str, peer_dir: str, out: str) -> None:
    sys.path.insert(0, peer_dir)
    sys.argv = sys.argv[:1]
    import run_modelscope_vg as rmv  # the peer harness: offline settings, shims, modelscope imports

    folder = Path(rows_file).parent
    rows = [json.loads(line) for line in open(rows_file, encoding="utf-8")]
    start = time.perf_counter()
    p = rmv.pipeline(rmv.Tasks.visual_grounding, model=os.path.abspath(model), device="cpu")
    loaded = time.perf_counter()
    boxes = [[float(v) for v in p({"image": str(folder / r["image"]), "text": r["text"]})["boxes"][0]] for r in rows]
    end = time.perf_counter()
    Path(out).write_text(json.dumps({"load_s": loaded - start, "answer_s": end - loaded, "boxes": boxes}))


def time_ours(name: str, argv: list[str], folder: Path, out: Path) -> dict:
    out.unlink(missing_ok=True)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "ofa_grounding.cli", *argv], cwd=folder, capture_output=True,
                          text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{name} failed ({done.returncode}): {done.stderr[-2000:]}")
    return {"name": name, "seconds": seconds, "out": out}


def boxes_of(out: Path, key: str) -> list[list[float]]:
    return [json.loads(line)[key] for line in out.read_text(encoding="utf-8").splitlines()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=60)
    ap.add_argument("--per-image", type=int, default=7)
    ap.add_argument("--model", default=str(SHARED / "reference" / "ofa-tiny-random"))
    ap.add_argument("--ours", action="append", default=[],
                    help="extra settings of ours to time, e.g. \"--workers 1 --threads 2\" (repeatable; each runs "
                         "for eval and predict)")
    ap.add_argument("--peer-python", default=str(ROOT.parent / "peer-venv" / "bin" / "python"))
    ap.add_argument("--peer-dir", default=str(SHARED / "peer"))
    ap.add_argument("--no-reference", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reference-worker", nargs=2, metavar=("ROWS", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.reference_worker:
        reference_worker(args.model, args.reference_worker[0], args.peer_dir, args.reference_worker[1])
        return 0
    if not Path(args.model).is_dir():
        print(f"collection_vs_reference.py: error: no model folder {args.model}", file=sys.stderr)
        return 2
    from ofa_grounding.bench import cpu_name

    with tempfile.TemporaryDirectory(prefix="ofa-refcoco-shaped-") as tmp:
        folder = Path(tmp)
        rows_file = write_collection(folder, args.images, args.per_image, args.seed)
        n = args.images * args.per_image
        print(f"CPU: {cpu_name()} ({os.cpu_count()} logical CPUs; load average {os.getloadavg()[0]:.2f} at start); "
              f"model: {args.model}; {args.images} images x {args.per_image} descriptions = {n}")
        settings = [[]] + [shlex.split(s) for s in args.ours]
        runs = []
        for extra in settings:
            label = " ".join(extra) or "defaults"
            runs.append(time_ours(f"eval ({label})", ["eval", "--model", args.model, "--data", str(rows_file),
                                                      "--out", str(folder / "eval.jsonl"), "--no-progress", *extra],
                                  folder, folder / "eval.jsonl"))
            runs[-1]["boxes"] = boxes_of(runs[-1]["out"], "box")
            runs.append(time_ours(f"predict --jsonl ({label})",
                                  ["predict", "--model", args.model, "--jsonl", str(rows_file), "--out",
                                   str(folder / "predict.jsonl"), "--no-progress", *extra],
                                  folder, folder / "predict.jsonl"))
            runs[-1]["boxes"] = boxes_of(runs[-1]["out"], "box")
        reference = None
        if not args.no_reference and Path(args.peer_python).exists():
            print("measuring the reference ...", file=sys.stderr)
            ref_out = folder / "reference.json"
            subprocess.run([args.peer_python, __file__, "--model", args.model, "--peer-dir", args.peer_dir,
                            "--reference-worker", str(rows_file), str(ref_out)], check=True, cwd=ROOT)
            reference = json.loads(ref_out.read_text())
        elif not args.no_reference:
            print(f"(no reference: {args.peer_python} is missing; bash ../shared/peer/setup_venv.sh makes it)")

    print(f"\n{'':42} {'seconds':>8} {'ms / description':>16} {'reference / ours':>16} {'same box':>9}")
    if reference:
        total = reference["load_s"] + reference["answer_s"]
        print(f"{'reference, one call a description':42} {total:8.1f} {1000 * total / n:16.1f} {'1.00x':>16} "
              f"{'':>9}")
    for r in runs:
        ratio = same = ""
        if reference:
            ratio = f"{(reference['load_s'] + reference['answer_s']) / r['seconds']:.2f}x"
            agree = sum(max(abs(a - b) for a, b in zip(mine, theirs)) < 1e-3
                        for mine, theirs in zip(r["boxes"], reference["boxes"]))
            same = f"{agree}/{n}"
        print(f"{r['name']:42} {r['seconds']:8.1f} {1000 * r['seconds'] / n:16.1f} {ratio:>16} {same:>9}")
    if reference:
        print(f"\n(the reference: {reference['load_s']:.1f} s building its pipeline, {reference['answer_s']:.1f} s "
              "answering; ours: whole processes, model load included)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
