#!/usr/bin/env python
"""A training mix for scripts/train_demo.sh: rows of several .jsonl files, re-weighted and shuffled, to stdout.

    python scripts/mix_rows.py SOURCE [SOURCE ...] > MIX/train.jsonl

Each SOURCE is `PATH[,prefix=P][,times=N][,KIND=W ...]`:
- `prefix=P` puts P before each row's image path (the mix's folder links P + "images" to the source's images);
  without it the line is copied as it is;
- `KIND=W` repeats rows of that kind (attribute, ordinal, relation, simple, ...) W times on average: int(W)
  times, once more with probability W - int(W) (one draw per row of that source);
- `times=N` repeats every row N times (no draws).

One random.Random(0) draws the repetitions, source by source, then shuffles the whole mix, so the same sources
give the same file (the mixes of the recorded stages, byte for byte).
"""

from __future__ import annotations

import json
import random
import sys


def parse(spec: str) -> tuple[str, str | None, int, dict[str, float]]:
    path, *options = spec.split(",")
    prefix, times, weights = None, 1, {}
    for option in options:
        key, _, value = option.partition("=")
        if key == "prefix":
            prefix = value
        elif key == "times":
            times = int(value)
        else:
            weights[key] = float(value)
    return path, prefix, times, weights


def main(specs: list[str]) -> int:
    if not specs:
        print(__doc__, file=sys.stderr)
        return 2
    rng, rows = random.Random(0), []
    for path, prefix, times, weights in map(parse, specs):
        for line in open(path, encoding="utf-8"):
            row = json.loads(line) if prefix is not None or weights else None
            if prefix is not None:
                row["image"] = prefix + row["image"]
                line = json.dumps(row) + "\n"
            if weights:
                w = weights.get(row["kind"], 1)
                rows += [line] * (int(w) + (rng.random() < w - int(w)))
            else:
                rows += [line] * times
    rng.shuffle(rows)
    sys.stdout.writelines(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
