#!/usr/bin/env python
"""Does `--threads`'s default (`cli.common.default_threads`: the idle cores) beat torch's own (one thread per
core) when a core is busy, and cost nothing when none is? Queries/s of `predict`, both ways, idle and with busy
cores.

    python benchmarks/threads.py [--model demo] [--seconds 20] [--busy 1] [--json]
    python benchmarks/threads.py --smoke     # 1 s per cell: that the script runs, not a measurement

Every cell runs in a fresh process (without OMP_NUM_THREADS, so that torch picks its own default there):
- ours: threads = `default_threads()`, measured at the process's start, as the commands do;
- torch: torch's default thread count, untouched.
"busy" keeps --busy cores busy with spinning processes (started here, ended here) during the cell. A query is
one description on one 640x480 synthetic scene with the feature cache off (the backbone runs every time);
queries/s counts the queries finished in --seconds after two warm-up queries. The machine must be otherwise
idle, or the "idle" rows are not: the table says what `default_threads()` saw.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPIN = "while True:\n    pass\n"


def worker(which: str, model: str | None, image: str, seconds: float) -> dict:
    """One cell, in this (fresh) process: the thread count `which` gives, and the queries/s it reaches."""
    import torch

    from ofa_grounding import Grounder
    from ofa_grounding.cli.common import default_threads

    if which == "ours":
        torch.set_num_threads(default_threads())
    grounder = Grounder.from_pretrained(model, cache_mb=0)
    for _ in range(2):
        grounder.predict(image, "the red circle")
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        grounder.predict(image, "the red circle")
        done += 1
    elapsed = time.perf_counter() - start
    return {"threads": torch.get_num_threads(), "queries": done, "seconds": elapsed, "qps": done / elapsed}


def run_cell(which: str, busy: int, args: argparse.Namespace, image: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(busy)]
    try:
        cmd = [sys.executable, __file__, "--worker", which, "--image", image, "--seconds", str(args.seconds)]
        cmd += ["--model", args.model] if args.model else []
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.seconds * 10 + 300)
    finally:
        for spinner in spinners:  # only the processes started above
            spinner.kill()
            spinner.wait()
    if done.returncode != 0:
        raise RuntimeError(f"{which} worker failed: {done.stderr.strip().splitlines()[-1:]}")
    return {"which": which, "busy": busy, **json.loads(done.stdout.strip().splitlines()[-1])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model name, as predict --model takes (default: the bundled demo model)")
    ap.add_argument("--seconds", type=float, default=20.0, help="measured seconds per cell (default 20)")
    ap.add_argument("--busy", type=int, default=1, help="cores kept busy in the busy rows (default 1)")
    ap.add_argument("--smoke", action="store_true",
                    help="1 s per cell: checks that the script runs (4 fresh processes: 20-60 s in all)")
    ap.add_argument("--json", action="store_true", help="also print the cells as JSON")
    ap.add_argument("--worker", choices=("ours", "torch"), help=argparse.SUPPRESS)
    ap.add_argument("--image", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.model, args.image, args.seconds)))
        return 0
    if args.smoke:
        args.seconds = 1.0
    if args.seconds <= 0 or args.busy < 1:
        ap.error("--seconds must be positive and --busy at least 1")
    from ofa_grounding.bench import cpu_name
    from ofa_grounding.cli.common import default_threads
    from ofa_grounding.synthetic import make_scene

    with tempfile.TemporaryDirectory() as tmp:
        image = str(Path(tmp) / "scene.png")
        make_scene(random.Random(3), (640, 480))[0].save(image)
        seen_idle = default_threads()
        cells = [run_cell(which, busy, args, image) for busy in (0, args.busy) for which in ("ours", "torch")]
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    idle_note = "" if seen_idle >= (cpus or 1) else f" (less than {cpus}: the machine was not idle)"
    print(f"machine: {cpu_name()}, {cpus} usable CPUs; default_threads() before the cells: {seen_idle}"
          f"{idle_note}; {args.seconds:g} s per cell"
          + (" (smoke run: not a measurement)" if args.smoke else ""))
    print(f"{'cores busy':>10} {'threads':>8} {'ours q/s':>9} {'threads':>8} {'torch q/s':>9} {'ours/torch':>10}")
    for busy in (0, args.busy):
        ours, torch_ = (next(c for c in cells if c["busy"] == busy and c["which"] == w) for w in ("ours", "torch"))
        print(f"{busy:>10} {ours['threads']:>8} {ours['qps']:>9.2f} {torch_['threads']:>8} {torch_['qps']:>9.2f} "
              f"{ours['qps'] / torch_['qps']:>9.2f}x")
    if args.json:
        print(json.dumps(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
