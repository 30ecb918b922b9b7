#!/usr/bin/env python
"""Average the weights of model directories of one architecture (checkpoint averaging, a "model soup" of runs
that share a start), for scripts/train_demo.sh and scripts/train_demo_small.sh.

    python scripts/average_weights.py OUT DIR [DIR ...] [--weights W [W ...]]

Each DIR is a model directory of a run (model.safetensors plus config and tokenizer files, as `train` saves
them). OUT gets the first DIR's files with model.safetensors replaced by the weighted mean of every DIR's
tensors (floating tensors in float32, then stored in the first DIR's dtype; others copied from the first DIR).
The weights default to equal shares. OUT must not exist.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def average(dirs: list[Path], shares: list[float]) -> dict[str, torch.Tensor]:
    states = [load_file(str(d / "model.safetensors")) for d in dirs]
    keys = set(states[0])
    for d, state in zip(dirs[1:], states[1:]):
        if set(state) != keys:
            raise ValueError(f"{d}: its tensors are not those of {dirs[0]} (another architecture?)")
    out = {}
    for key, first in states[0].items():
        if any(s[key].shape != first.shape for s in states[1:]):
            raise ValueError(f"{key}: shapes differ between the models")
        if first.is_floating_point():
            mean = sum(w * s[key].float() for w, s in zip(shares, states))
            out[key] = mean.to(first.dtype).contiguous()
        else:
            out[key] = first.clone()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("dirs", type=Path, nargs="+")
    parser.add_argument("--weights", type=float, nargs="+", help="one per DIR (normalised to sum to 1)")
    args = parser.parse_args(argv)
    weights = args.weights or [1.0] * len(args.dirs)
    if len(weights) != len(args.dirs) or min(weights) < 0 or sum(weights) <= 0:
        parser.error("--weights needs one non-negative number per DIR, not all zero")
    if args.out.exists():
        parser.error(f"{args.out} exists: give a new directory")
    for d in args.dirs:
        if not (d / "model.safetensors").is_file():
            parser.error(f"{d}: no model.safetensors (not a model directory)")
    shares = [w / sum(weights) for w in weights]
    try:
        state = average(args.dirs, shares)
    except ValueError as e:
        print(f"average_weights.py: {e}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True)
    for f in args.dirs[0].iterdir():
        if f.is_file() and f.name != "model.safetensors" and not f.name.startswith("trainer_state"):
            shutil.copy2(f, args.out / f.name)
    save_file(state, str(args.out / "model.safetensors"))
    print(f"{args.out}: the mean of {len(args.dirs)} models (shares {', '.join(f'{s:.3g}' for s in shares)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
