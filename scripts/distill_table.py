#!/usr/bin/env python
"""The distillation experiment's table, as the seed model's card prints it, from scripts/distill_experiment.sh's
scores (OUT/NAME-sSEED-BENCH.eval.json): teacher / finetuned student / distilled student per benchmark (Acc@0.5,
Acc@0.75, mIoU; each seed and the mean +- half the range over seeds), then Acc@0.5 per expression kind.

    python scripts/distill_table.py runs/distill-experiment
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

NAMES = ("teacher", "finetuned", "distilled")
METRICS = ("acc50", "acc75", "miou")


def load(out: Path) -> dict[str, dict[str, dict[str, dict]]]:
    """bench -> name -> seed -> the eval report's test split."""
    table: dict = defaultdict(lambda: defaultdict(dict))
    for path in sorted(out.glob("*.eval.json")):
        m = re.fullmatch(r"(teacher|finetuned|distilled)-s(.+?)-(.+)\.eval", path.stem)
        if m:
            table[m[3]][m[1]][m[2]] = json.loads(path.read_text())["splits"]["test"]
    return table


def spread(values: list[float]) -> str:
    """Mean +- half the range, in percent (one value: just it)."""
    pct = [100 * v for v in values]
    if len(pct) == 1:
        return f"{pct[0]:.1f}"
    return f"{statistics.mean(pct):.1f} ± {(max(pct) - min(pct)) / 2:.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="the experiment's output folder")
    ap.add_argument("--window", type=int, default=100, help="updates averaged per point of the NLL table (100)")
    args = ap.parse_args()
    table = load(args.out)
    if not table:
        print(f"{args.out}: no scores (*.eval.json) yet", file=sys.stderr)
        return 1
    for bench, by_name in table.items():
        n = next(iter(next(iter(by_name.values())).values()))["count"]
        print(f"\n{bench}, test split ({n} samples); Acc@0.5 / Acc@0.75 / mIoU in %, each seed; mean ± half-range\n")
        print("| model | seeds | seed 1 | seed 2 | seed 3 | Acc@0.5 | Acc@0.75 | mIoU |")
        print("| --- | ---: | " + " | ".join("---" for _ in range(3)) + " | ---: | ---: | ---: |")
        for name in NAMES:
            runs = by_name.get(name, {})
            if not runs:
                continue
            cells = [] if name == "teacher" else [" / ".join(f"{100 * r[k]:.1f}" for k in METRICS)
                                                  for _, r in sorted(runs.items())]
            cells += [""] * (3 - len(cells))
            means = [spread([r[k] for r in runs.values()]) for k in METRICS]
            print(f"| {name} | {len(runs)} | " + " | ".join(cells) + " | " + " | ".join(means) + " |")
        ft, di = by_name.get("finetuned", {}), by_name.get("distilled", {})
        pairs = [(di[s]["acc50"] - ft[s]["acc50"]) * 100 for s in ft if s in di]
        if pairs:
            print(f"\ndistilled − finetuned, Acc@0.5 per seed: {', '.join(f'{d:+.1f}' for d in pairs)} points "
                  f"(mean {statistics.mean(pairs):+.1f})")
        kinds = sorted({k for runs in by_name.values() for r in runs.values()
                        for k in r["breakdowns"].get("expression kind", {})})
        print(f"\nAcc@0.5 by expression kind, {bench} (%, mean ± half-range over seeds)\n")
        print("| model | " + " | ".join(kinds) + " |")
        print("| --- | " + " | ".join("---:" for _ in kinds) + " |")
        for name in NAMES:
            runs = by_name.get(name, {})
            if runs:
                print(f"| {name} | " + " | ".join(
                    spread([r["breakdowns"]["expression kind"][k]["acc50"] for r in runs.values()]) for k in kinds)
                    + " |")
    nll_table(args.out, args.window)
    return 0


def nll_table(out: Path, window: int) -> None:
    """The task's NLL per token on the training batches (log.csv's `nll`, mean of `window` updates) at every
    500th update, per run: how fast each arm learns the task itself."""
    logs = {d.name: list(csv.DictReader((d / "log.csv").open())) for d in sorted(out.glob("*-s*"))
            if (d / "log.csv").is_file()}
    if not logs:
        return
    last = max(int(rows[-1]["step"]) for rows in logs.values() if rows)
    points = list(range(500, last + 1, 500))
    print(f"\nTask NLL per token on the training batches (mean of the {window} updates up to each step)\n")
    print("| run | " + " | ".join(f"step {p}" for p in points) + " |")
    print("| --- | " + " | ".join("---:" for _ in points) + " |")
    for name, rows in logs.items():
        by_step = {int(r["step"]): float(r["nll"]) for r in rows if r["nll"]}
        means = [f"{statistics.mean(by_step[s] for s in range(p - window + 1, p + 1) if s in by_step):.3f}"
                 if p in by_step else "" for p in points]
        print(f"| {name} | " + " | ".join(means) + " |")


if __name__ == "__main__":
    sys.exit(main())
