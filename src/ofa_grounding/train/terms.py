"""The training loss as a list of terms: OFA's task loss first, then any others (distillation, the cell heads).

The loop (loop.py) knows nothing of what a term computes. Per micro-batch it calls every term's
`before_forward`, runs the model's forward inside every term's `observing` context, then adds up the parts
each term returns, in term order, and back-propagates the sum once. A term may own parameters (trained with
the model, saved with the trainer state, not with the model) and logs its own columns of log.csv (`log`,
every `--log-every` updates; `reset` starts the next window).

A new term: subclass `LossTerm`, give it a `name`, return its weighted parts from `__call__`, and add it where
`Trainer` builds `self.terms` (loop.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..model import AttentionRecord
from .losses import label_smoothed_nll, soft_bin_cross_entropy

__all__ = ["Forward", "LossTerm", "TaskLoss", "to_device"]


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device`; to a GPU through pinned memory, so that the copy does not wait for the GPU."""
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t.to(device)


@dataclass
class Forward:
    """One micro-batch's forward pass, as the terms read it."""

    batch: dict[str, torch.Tensor]  # on the device; "patch_images" normalised
    host: dict[str, torch.Tensor]  # the same micro-batch as collated, on the host (indices without a device sync)
    logits: torch.Tensor  # (B, T, V') over the open ids (under autocast: maybe bfloat16)
    n_tokens: int  # target tokens of the whole update (every micro-batch)
    n_micro: int  # micro-batches in the update


class LossTerm:
    """A piece of the training loss. The defaults do nothing: a term overrides what it needs.

    What a term logs it keeps as sums on the device (float64, so that the sums equal Python's), over the
    updates since `reset`; only `log` reads them back, so the loop decides how often the host waits for
    the device (`--log-every`)."""

    name = ""  # prefix of its tensors in trainer_state.safetensors

    def parameters(self) -> list[nn.Parameter]:
        """Parameters trained with the model (they go to the optimizer after the model's)."""
        return []

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """What `--resume` needs of the term (its parameters), saved under f"{name}." in the trainer state."""
        return {}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        pass

    def reset(self) -> None:
        """A new logging window begins: forget the sums the term logs."""

    def before_forward(self, batch: dict[str, torch.Tensor], host: dict[str, torch.Tensor]) -> None:
        """Work outside the student's forward pass and its autocast (e.g. a teacher's pass)."""

    @contextlib.contextmanager
    def observing(self) -> Iterator[AttentionRecord | None]:
        """Entered around the forward pass (hooks that capture tensors); may yield an `AttentionRecord` for the
        model's forward to fill."""
        yield None

    def __call__(self, fwd: Forward) -> list[torch.Tensor]:
        """The term's weighted parts of this micro-batch's loss, added to the total in this order."""
        raise NotImplementedError

    def log(self, n_tokens: int, n_updates: int) -> dict[str, str]:
        """The term's log.csv columns over the window: `n_tokens` target tokens in `n_updates` updates."""
        return {}


class TaskLoss(LossTerm):
    """OFA's grounding loss: label-smoothed cross-entropy over the open ids (or our soft bins), per target token."""

    name = "task"

    def __init__(self, column: torch.Tensor, label_smoothing: float, bin_sigma: float = 0.0) -> None:
        self.column = column  # vocabulary id -> its column among the open ids (-1 elsewhere)
        self.label_smoothing, self.bin_sigma = label_smoothing, bin_sigma
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros(2, dtype=torch.float64, device=self.column.device)  # loss, NLL
        self.position_nll = torch.zeros(5, device=self.column.device)  # x0, y0, x1, y1, EOS

    def __call__(self, fwd: Forward) -> list[torch.Tensor]:
        logits = fwd.logits
        lprobs = F.log_softmax(logits.float(), dim=-1).view(-1, logits.shape[-1])
        target = self.column[fwd.batch["target"].view(-1)]
        if self.bin_sigma > 0:
            loss, nll = soft_bin_cross_entropy(lprobs, target, self.label_smoothing, self.bin_sigma)
        else:
            loss, nll = label_smoothed_nll(lprobs, target, self.label_smoothing)
        with torch.no_grad():  # NLL per box token position, for the log
            self.position_nll -= lprobs.detach().gather(1, target[:, None]).view(-1, 5).sum(0)
            self.sums += torch.stack([loss.detach(), nll.detach()]).double()
        return [loss / fwd.n_tokens]

    def log(self, n_tokens: int, n_updates: int) -> dict[str, str]:
        loss, nll, *positions = torch.cat([self.sums, self.position_nll[:4].double()]).tolist()
        n_samples = n_tokens // 5
        return {"loss": f"{loss / n_tokens:.5f}", "nll": f"{nll / n_tokens:.5f}",
                **{f"nll_{name}": f"{v / n_samples:.4f}" for name, v in zip(("x0", "y0", "x1", "y1"), positions)}}
