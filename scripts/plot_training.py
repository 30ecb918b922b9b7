#!/usr/bin/env python
"""Plot a training run's curve from its log.csv: loss per step, and validation Acc@0.5 where measured.

    python scripts/plot_training.py RUN/log.csv OUT.png [--title TEXT]

Needs matplotlib (`pip install 'ofa-grounding[plot]'`).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("log", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--title", default=None)
    args = ap.parse_args()
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot_training: matplotlib is not installed (pip install 'ofa-grounding[plot]')", file=sys.stderr)
        return 2
    with args.log.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        print(f"plot_training: {args.log} has no rows", file=sys.stderr)
        return 1
    steps = [int(r["step"]) for r in rows]
    loss = [float(r["loss"]) for r in rows]
    window = max(1, len(loss) // 100)  # a running mean, so that the trend shows through the noise
    smooth = [sum(loss[max(0, i - window + 1): i + 1]) / len(loss[max(0, i - window + 1): i + 1])
              for i in range(len(loss))]
    val = [(int(r["step"]), 100 * float(r["val_acc50"])) for r in rows if r.get("val_acc50")]

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    ax.plot(steps, loss, color="#9ab", linewidth=0.6, label="training loss (per step)")
    ax.plot(steps, smooth, color="#247", linewidth=1.5, label=f"training loss (mean of {window})")
    ax.set_xlabel("update step")
    ax.set_ylabel("label-smoothed cross-entropy per token")
    ax.grid(alpha=0.3)
    if val:
        ax2 = ax.twinx()
        ax2.plot([s for s, _ in val], [a for _, a in val], "o-", color="#c42", label="validation Acc@0.5 (%)")
        ax2.set_ylabel("validation Acc@0.5 (%)")
        ax2.set_ylim(0, 100)
        lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
        labels = ax.get_legend_handles_labels()[1] + ax2.get_legend_handles_labels()[1]
        ax.legend(lines, labels, loc="center right")
    else:
        ax.legend(loc="upper right")
    ax.set_title(args.title or f"training curve: {args.log.parent.name}")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
