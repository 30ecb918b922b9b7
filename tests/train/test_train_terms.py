"""train/terms.py: the task loss as a term, on hand-computed values, and how terms add up."""

from __future__ import annotations

import math

import pytest
import torch

from ofa_grounding.train.terms import Forward, LossTerm, TaskLoss

# open ids: 0..3 specials, then 3 bins at vocabulary ids 10, 11, 12 -> columns 4, 5, 6
COLUMN = torch.full((13,), -1, dtype=torch.long)
COLUMN[[0, 1, 2, 3, 10, 11, 12]] = torch.arange(7)


def _forward(probs: list[list[float]], n_micro: int = 1, n_tokens: int | None = None) -> Forward:
    """One sample whose 5 target tokens (x0, y0, x1, y1, EOS) are bins 10, 11, 12, 12 and EOS (id 2)."""
    logits = torch.tensor(probs).log()[None]  # log-probabilities are logits whose softmax is `probs`
    batch = {"target": torch.tensor([[10, 11, 12, 12, 2]])}
    return Forward(batch, batch, logits, n_tokens or 5, n_micro)


UNIFORM = [[1 / 7] * 7] * 5
SURE = [[0.01, 0.01, 0.01, 0.01, 0.94, 0.01, 0.01], [0.01] * 5 + [0.94, 0.01], [0.01] * 6 + [0.94],
        [0.01] * 6 + [0.94], [0.01, 0.01, 0.94, 0.01, 0.01, 0.01, 0.01]]


def test_task_loss_per_token_and_its_log_columns() -> None:
    term = TaskLoss(COLUMN, label_smoothing=0.0)
    [part] = term(_forward(SURE))
    assert part.item() == pytest.approx(-math.log(0.94), rel=1e-5)  # the mean NLL over the 5 tokens
    [part] = term(_forward(UNIFORM))
    assert part.item() == pytest.approx(math.log(7), rel=1e-5)
    log = term.log(n_tokens=10, n_updates=2)  # the window so far: 10 tokens, 2 samples
    assert float(log["loss"]) == pytest.approx((-math.log(0.94) + math.log(7)) / 2, abs=1e-5)
    assert float(log["nll_x0"]) == pytest.approx((-math.log(0.94) + math.log(7)) / 2, abs=1e-4)
    term.reset()
    assert term.log(n_tokens=5, n_updates=1)["loss"] == "0.00000"


def test_label_smoothing_and_soft_bins_reach_the_term() -> None:
    eps = 0.1
    [smoothed] = TaskLoss(COLUMN, label_smoothing=eps)(_forward(SURE))
    # OFA's rule per token: (1 - eps - eps / (V - 1)) * nll + eps / (V - 1) * sum of -log p over the V columns
    per_token = [(1 - eps - eps / 6) * -math.log(0.94) + eps / 6 * -(math.log(0.94) + 6 * math.log(0.01))] * 5
    assert smoothed.item() == pytest.approx(sum(per_token) / 5, rel=1e-5)
    [soft] = TaskLoss(COLUMN, label_smoothing=0.0, bin_sigma=1.0)(_forward(SURE))
    assert soft.item() > -math.log(0.94)  # neighbouring bins share the target: a sharp guess costs more


def test_parts_are_weighted_per_update() -> None:
    """A term's parts are divided by the update's token count (per-token terms) or its micro-batches."""
    [whole] = TaskLoss(COLUMN, 0.0)(_forward(SURE))
    [half] = TaskLoss(COLUMN, 0.0)(_forward(SURE, n_micro=2, n_tokens=10))
    assert half.item() == pytest.approx(whole.item() / 2)
    with pytest.raises(NotImplementedError):
        LossTerm()(_forward(SURE))
    assert LossTerm().parameters() == [] and LossTerm().log(5, 1) == {}
