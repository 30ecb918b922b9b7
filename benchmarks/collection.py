#!/usr/bin/env python
"""Grounding a collection: lines/s and peak memory of `ofa-ground predict --jsonl IN --out OUT`, as the number
of lines grows (memory should not), for one or more --workers counts.

    python benchmarks/collection.py [--lines 500 2000] [--workers 1] [--model demo] [--batch-size 8]
    python benchmarks/collection.py --smoke     # 50 lines: that the script runs, not a measurement

The input: N lines over 8 small synthetic scenes (320x240 PNGs), two descriptions per image in a row, the
scenes repeated (so the backbone runs once per scene per process: the feature cache holds them; what this
measures is mostly the encoder and decoder per description, plus reading, chunking and writing). Each cell is
one fresh `python -m ofa_grounding.cli predict` process (started here, ended here), the model load included:
"marginal lines/s" between two sizes leaves that fixed cost out. Peak RSS: the largest sum of VmRSS over the
command's process tree, polled every 50 ms from /proc (the writer and its --workers processes together), and
the largest single process's VmHWM. Linux only. Keep it small on a shared machine: each cell runs the model.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["the red circle", "the blue square on the left", "a green triangle", "the small yellow star",
         "the shape in the middle", "the largest object"]


def write_input(folder: Path, lines: int) -> Path:
    from PIL import Image, ImageDraw

    (folder / "images").mkdir(parents=True, exist_ok=True)
    for k in range(8):
        image = Image.new("RGB", (320, 240), (240, 240, 240))
        draw = ImageDraw.Draw(image)
        draw.ellipse((20 + 20 * k, 30, 110 + 20 * k, 120), fill=(200, 30, 30))
        draw.rectangle((180, 100 + 10 * k, 260, 180 + 10 * k), fill=(30, 30, 200))
        image.save(folder / "images" / f"scene{k}.png")
    src = folder / f"in-{lines}.jsonl"
    with src.open("w") as f:
        for n in range(lines):
            f.write(json.dumps({"image": f"images/scene{(n // 2) % 8}.png", "text": f"{WORDS[n % len(WORDS)]}"}) + "\n")
    return src


def _tree(root: int) -> list[int]:
    """`root` and its descendants, from /proc/*/stat."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, parent in parents.items() if parent in frontier]
        found += frontier
    return found


def _status_kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_cell(src: Path, out: Path, model: str | None, workers: int, batch_size: int, threads: int) -> dict:
    command = [sys.executable, "-m", "ofa_grounding.cli", "predict", "--jsonl", str(src), "--out", str(out),
               "--no-progress", "--batch-size", str(batch_size), "--workers", str(workers), "--threads", str(threads)]
    if model:
        command += ["--model", model]
    out.unlink(missing_ok=True)
    start = time.perf_counter()
    log = out.with_suffix(".stderr")
    with log.open("w") as err_file:
        process = subprocess.Popen(command, cwd=ROOT, stderr=err_file)
    peak_sum = peak_one = 0
    while process.poll() is None:
        pids = _tree(process.pid)
        peak_sum = max(peak_sum, sum(_status_kb(pid, "VmRSS") for pid in pids))
        peak_one = max(peak_one, *(_status_kb(pid, "VmHWM") for pid in pids))
        time.sleep(0.05)
    seconds = time.perf_counter() - start
    err = log.read_text()
    if process.returncode != 0:
        raise SystemExit(f"predict failed ({process.returncode}): {err[-2000:]}")
    written = sum(1 for _ in out.open("rb"))
    return {"seconds": seconds, "written": written, "peak_rss_mb": peak_sum / 1024,
            "max_process_hwm_mb": peak_one / 1024}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, nargs="+", default=[500, 2000])
    ap.add_argument("--workers", type=int, nargs="+", default=[1])
    ap.add_argument("--model", default=None, help="model name or directory (default: the bundled demo model)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    ap.add_argument("--smoke", action="store_true", help="50 lines, one cell: that the script runs")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON too")
    args = ap.parse_args()
    from ofa_grounding.bench import cpu_name

    sizes = [50] if args.smoke else sorted(args.lines)
    workers = [1] if args.smoke else args.workers
    print(f"CPU: {cpu_name()} ({os.cpu_count()} logical CPUs; load average {os.getloadavg()[0]:.2f} at start); "
          f"model: {args.model or 'demo (bundled)'}; --batch-size {args.batch_size}, --threads {args.threads} "
          "per process")
    rows = []
    with tempfile.TemporaryDirectory(prefix="ofa-collection-") as tmp:
        folder = Path(tmp)
        for w in workers:
            previous = None
            for n in sizes:
                src = write_input(folder, n)
                cell = run_cell(src, folder / "out.jsonl", args.model, w, args.batch_size, args.threads)
                if cell["written"] != n:
                    raise SystemExit(f"{n} lines in, {cell['written']} out")
                marginal = ((n - previous[0]) / (cell["seconds"] - previous[1])
                            if previous and cell["seconds"] > previous[1] else None)
                rows.append({"lines": n, "workers": w, **cell, "lines_per_s": n / cell["seconds"],
                             "marginal_lines_per_s": marginal})
                previous = (n, cell["seconds"])
    print(f"{'lines':>8} {'workers':>7} {'seconds':>8} {'lines/s':>8} {'marginal/s':>10} {'peak RSS MB':>11} "
          f"{'max proc MB':>11}")
    for r in rows:
        marginal = f"{r['marginal_lines_per_s']:10.1f}" if r["marginal_lines_per_s"] else f"{'-':>10}"
        print(f"{r['lines']:8d} {r['workers']:7d} {r['seconds']:8.2f} {r['lines_per_s']:8.1f} {marginal} "
              f"{r['peak_rss_mb']:11.0f} {r['max_process_hwm_mb']:11.0f}")
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
