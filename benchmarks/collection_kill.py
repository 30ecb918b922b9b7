#!/usr/bin/env python
"""A long collection, killed and resumed: `ofa-ground predict --jsonl IN --out OUT` on N lines (default one
million), SIGKILLed at random points and started again with the same command until it completes; peak memory
over the whole run, memory as the run goes on, and whether the final file is what an uninterrupted run writes.

    python benchmarks/collection_kill.py [--lines 1000000] [--kills 3] [--batch-size 32] [--model demo]
    python benchmarks/collection_kill.py --lines 3000 --kills 2     # a few minutes: that the script runs

The input: one 320x240 scene and 8 descriptions, line n describing it with description (n - 1) % 8. With one
image, `predict` cuts the input into chunks of 8 x batch size lines (a multiple of 8), so every whole chunk is the
same 8 x batch-size (image, description) pairs in the same order, and an uninterrupted run answers each such
chunk with the same bytes but for the line numbers. The expected file is built from an uninterrupted run of the
first `--check-chunks` chunks plus the input's tail (the same command, run here first): the script checks
that those chunks are indeed alike, then that the killed-and-resumed file has every line 1..N once, in order,
each equal to the uninterrupted run's answer for its position in its chunk. Small runs (N up to
`--full-check` lines) are instead compared byte for byte with an uninterrupted run of all N lines.

Memory: the sum of VmRSS over the command's process tree, polled every 0.2 s from /proc (Linux only), per
segment (one start of the command) and as a timeline of lines written against RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from collection import _status_kb, _tree  # noqa: E402

TEXTS = ["the red circle", "the blue square", "the green triangle", "the yellow star", "the shape on the left",
         "the biggest shape", "the purple star", "the circle that is red"]


def write_input(folder: Path, lines: int, start: int = 0) -> Path:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (320, 240), (240, 240, 240))
    draw = ImageDraw.Draw(image)
    draw.ellipse((30, 40, 120, 130), fill=(200, 30, 30))
    draw.rectangle((180, 110, 260, 190), fill=(30, 30, 200))
    draw.polygon([(150, 20), (190, 90), (110, 90)], fill=(30, 160, 30))
    image.save(folder / "scene.png")
    src = folder / f"in-{lines}.jsonl"
    with src.open("w") as f:
        for n in range(start, start + lines):
            f.write(json.dumps({"image": "scene.png", "text": TEXTS[n % len(TEXTS)]}) + "\n")
    return src


def command(src: Path, out: Path, args: argparse.Namespace) -> list[str]:
    cmd = [sys.executable, "-m", "ofa_grounding.cli", "predict", "--jsonl", str(src), "--out", str(out),
           "--no-progress", "--batch-size", str(args.batch_size), "--workers", str(args.workers),
           "--threads", str(args.threads)]
    return cmd + (["--model", args.model] if args.model else [])


def lines_in(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open("rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def run_segment(cmd: list[str], out: Path, kill_at_line: int | None, line_bytes: float, timeline: list,
                t0: float) -> dict:
    """One start of the command: polls its process tree's RSS; SIGKILLs the whole tree once the output holds
    about `kill_at_line` lines (None: let it finish), judged from the file's size (`line_bytes` a line)."""
    start = time.perf_counter()
    process = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, start_new_session=True)
    peak = 0
    killed = False
    last_mark = start
    while process.poll() is None:
        rss = sum(_status_kb(pid, "VmRSS") for pid in _tree(process.pid))
        peak = max(peak, rss)
        now = time.perf_counter()
        if kill_at_line is not None or now - last_mark > 30:
            written = int(out.stat().st_size / line_bytes) if out.exists() else 0
            if now - last_mark > 30:
                timeline.append((now - t0, written, rss / 1024))
                last_mark = now
            if kill_at_line is not None and written >= kill_at_line:
                os.killpg(process.pid, signal.SIGKILL)
                killed = True
                process.wait()
                break
        time.sleep(0.2)
    err = process.stderr.read().decode(errors="replace") if process.stderr else ""
    if not killed and process.returncode != 0:
        raise SystemExit(f"predict failed ({process.returncode}): {err[-2000:]}")
    return {"seconds": time.perf_counter() - start, "peak_rss_mb": peak / 1024, "killed": killed,
            "lines_after": lines_in(out)}


def without_line(raw: bytes) -> bytes:
    row = json.loads(raw)
    row.pop("line")
    return json.dumps(row, sort_keys=True).encode()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--kills", type=int, default=3, help="SIGKILLs at random points (default 3)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", default=None, help="model name or directory (default: the bundled demo model)")
    ap.add_argument("--check-chunks", type=int, default=8, help="uninterrupted chunks the check is built from")
    ap.add_argument("--full-check", type=int, default=20000,
                    help="up to this many lines, compare with an uninterrupted run of all of them")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--folder", type=Path, default=None, help="keep the files here (default: a temporary folder)")
    args = ap.parse_args()
    from ofa_grounding.bench import cpu_name

    rng = random.Random(args.seed)
    chunk = 8 * args.batch_size
    print(f"CPU: {cpu_name()} ({os.cpu_count()} logical CPUs; load average {os.getloadavg()[0]:.2f} at start); "
          f"model: {args.model or 'demo (bundled)'}; {args.lines:,} lines; --batch-size {args.batch_size} "
          f"(chunks of {chunk} lines), --workers {args.workers}, --threads {args.threads}; {args.kills} SIGKILLs")
    with tempfile.TemporaryDirectory(prefix="ofa-kill-") as tmp:
        folder = args.folder or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        src = write_input(folder, args.lines)
        full = args.lines <= args.full_check
        # The uninterrupted run: all lines, or the first chunks and then the input's tail on its own.
        head = args.lines if full else args.check_chunks * chunk
        if full:
            ref_in = src
        else:
            (folder / "head").mkdir(exist_ok=True)
            ref_in = write_input(folder / "head", head)
        ref_out = folder / "uninterrupted.jsonl"
        ref_out.unlink(missing_ok=True)
        t = time.perf_counter()
        subprocess.run(command(ref_in, ref_out, args), cwd=ROOT, check=True)
        print(f"uninterrupted run of {head:,} lines: {time.perf_counter() - t:.1f} s")
        line_bytes = ref_out.stat().st_size / head

        out = folder / "out.jsonl"
        out.unlink(missing_ok=True)
        segments, timeline, t0 = [], [], time.perf_counter()
        for k in range(args.kills + 1):  # each kill at a random line past what the file holds
            held = lines_in(out)
            point = rng.randrange(held + chunk, args.lines) if k < args.kills and held + chunk < args.lines else None
            segments.append(run_segment(command(src, out, args), out, point, line_bytes, timeline, t0))
            segments[-1]["kill_at_line"] = point
            if not segments[-1]["killed"]:
                break
        total = time.perf_counter() - t0

        with ref_out.open("rb") as f:
            ref = f.read().splitlines()
        with out.open("rb") as f:
            got = f.read().splitlines()
        problems = []
        if len(got) != args.lines:
            problems.append(f"{len(got):,} lines written, {args.lines:,} expected")
        if full:
            if got != ref:
                problems.append("the file differs from the uninterrupted run's")
        else:
            canon = [without_line(x) for x in ref[:chunk]]
            for c in range(1, args.check_chunks):  # the premise: whole chunks are answered alike
                if [without_line(x) for x in ref[c * chunk:(c + 1) * chunk]] != canon:
                    problems.append(f"the uninterrupted run's chunk {c} differs from chunk 0")
            whole = args.lines // chunk * chunk
            tail_in = folder / "tail.jsonl"  # the last, partial chunk: its own uninterrupted run
            with src.open("rb") as f_in, tail_in.open("wb") as f_tail:
                for n, raw in enumerate(f_in):
                    if n >= whole:
                        f_tail.write(raw)
            tail_ref = []
            if whole < args.lines:
                tail_out = folder / "tail-out.jsonl"
                tail_out.unlink(missing_ok=True)
                subprocess.run(command(tail_in, tail_out, args), cwd=ROOT, check=True)
                tail_ref = [without_line(x) for x in tail_out.read_bytes().splitlines()]
            for n, raw in enumerate(got, start=1):
                row = json.loads(raw)
                expected = canon[(n - 1) % chunk] if n <= whole else tail_ref[n - 1 - whole]
                if row.get("line") != n or without_line(raw) != expected:
                    problems.append(f"line {n} differs from the uninterrupted run's")
                    break

    print(f"\n{'segment':>7} {'killed at line':>14} {'lines after':>11} {'seconds':>8} {'peak RSS MB':>11}")
    for i, s in enumerate(segments, start=1):
        point = f"{s['kill_at_line']:,}" if s["killed"] else "(finished)"
        print(f"{i:7d} {point:>14} {s['lines_after']:>11,} {s['seconds']:8.1f} {s['peak_rss_mb']:11.0f}")
    print(f"\ntotal {total / 60:.1f} min, {args.lines / total:.0f} lines/s over all segments; "
          f"peak RSS {max(s['peak_rss_mb'] for s in segments):.0f} MB")
    if timeline:
        print("\nRSS as the run goes on (polled every 30 s, lines estimated from the file's size; 10 samples shown):")
        step = max(1, len(timeline) // 10)
        for seconds, written, rss in timeline[::step]:
            print(f"  {seconds / 60:6.1f} min  {written:>9,} lines  {rss:6.0f} MB")
    how = "byte for byte with an uninterrupted run" if full else (
        f"line by line with an uninterrupted run's {args.check_chunks} chunks of {chunk} lines and its tail")
    print(f"\ncheck ({how}): " + ("the same" if not problems else "; ".join(problems)))
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
