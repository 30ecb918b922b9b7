"""What `--resume` reads back: the optimizer's moments as safetensors (beside its scalars in JSON), and log.csv
cut back to the checkpoint's step. The trainer (loop.py) writes both into last/ with the model."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import torch

__all__ = ["TrainLog", "optimizer_state", "restore_optimizer"]


def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors named "optimizer.<param index>.<key>", everything else as JSON-able scalars)."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {"param_groups": state["param_groups"], "state": {}}
    for idx, values in state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars["state"].setdefault(str(idx), {})[key] = value
    return tensors, scalars


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], scalars: dict) -> None:
    """The inverse of `optimizer_state` (other tensors in `tensors` are ignored)."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    for idx, values in scalars["state"].items():
        state.setdefault(int(idx), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": scalars["param_groups"]})


class TrainLog:
    """log.csv: one row every --log-every updates (and at validation, stops and the end); the loss terms fill
    their own columns."""

    FIELDS = ("step", "epoch", "lr", "loss", "nll", "samples_per_s", "val_acc50", "val_acc75", "val_miou", "kd",
              "attn", "hidden", "nll_x0", "nll_y0", "nll_x1", "nll_y1", "attr", "pointer", "pointer_acc")

    def __init__(self, path: Path, resume_step: int | None) -> None:
        self.path = path
        if resume_step is not None and path.exists():  # drop what was logged after the checkpoint
            with path.open(newline="") as f:
                rows = [r for r in csv.reader(f)]
            rows = rows[:1] + [r for r in rows[1:] if r and int(r[0]) <= resume_step]
        else:
            rows = [list(self.FIELDS)]
        with path.open("w", newline="") as f:
            csv.writer(f).writerows(rows)

    def write(self, **row: Any) -> None:
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow([row.get(k, "") for k in self.FIELDS])
