"""train/losses.py: every loss on hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from ofa_grounding.train.losses import (
    attention_mse_sum,
    hidden_mse,
    kd_cross_entropy,
    label_smoothed_nll,
    soft_bin_cross_entropy,
)


def test_label_smoothed_loss_known_values() -> None:
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]])
    loss, nll = label_smoothed_nll(probs.log(), torch.tensor([0, 2]), 0.1)
    eps_i = 0.1 / 2
    expected = sum((1 - 0.1 - eps_i) * -math.log(p[t]) + eps_i * -sum(math.log(x) for x in p)
                   for p, t in (([0.7, 0.2, 0.1], 0), ([0.25, 0.25, 0.5], 2)))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert nll.item() == pytest.approx(-math.log(0.7) - math.log(0.5), rel=1e-6)
    assert label_smoothed_nll(probs.log(), torch.tensor([0, 2]), 0.0)[0].item() == pytest.approx(nll.item())


def test_soft_bin_loss_known_values() -> None:
    # columns 0..3 specials, 4..6 three bins; sigma 1: the bin-1 target spreads exp(-1/2) : 1 : exp(-1/2)
    lprobs = torch.tensor([[0.1, 0.1, 0.2, 0.1, 0.1, 0.3, 0.1]]).log()
    loss, nll = soft_bin_cross_entropy(lprobs, torch.tensor([5]), 0.0, 1.0)
    w = [math.exp(-0.5), 1.0, math.exp(-0.5)]
    expected = -sum(wi / sum(w) * math.log(p) for wi, p in zip(w, [0.1, 0.3, 0.1]))
    assert loss.item() == pytest.approx(expected, rel=1e-6) and nll.item() == pytest.approx(-math.log(0.3), rel=1e-6)
    # an EOS target (column 2) keeps plain label smoothing, eps spread uniformly
    loss, _ = soft_bin_cross_entropy(lprobs, torch.tensor([2]), 0.1, 1.0)
    expected = 0.9 * -math.log(0.2) + 0.1 / 7 * -sum(math.log(p) for p in [0.1, 0.1, 0.2, 0.1, 0.1, 0.3, 0.1])
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_kd_cross_entropy_known_values() -> None:
    teacher = torch.tensor([[math.log(0.5), math.log(0.25), math.log(0.25)]])
    student = torch.tensor([[math.log(0.2), math.log(0.3), math.log(0.5)]])
    expected = -(0.5 * math.log(0.2) + 0.25 * math.log(0.3) + 0.25 * math.log(0.5))
    assert kd_cross_entropy(student, teacher).item() == pytest.approx(expected, rel=1e-6)
    # temperature 2: both distributions flatten; teacher sqrt(p) normalised, student log_softmax(z / 2)
    pt = torch.tensor([0.5, 0.25, 0.25]).sqrt()
    pt = pt / pt.sum()
    ls = torch.log_softmax(student[0] / 2, -1)
    assert kd_cross_entropy(student, teacher, 2.0).item() == pytest.approx(-(pt * ls).sum().item(), rel=1e-6)
    # sums over tokens
    assert kd_cross_entropy(student.repeat(3, 1), teacher.repeat(3, 1)).item() == pytest.approx(3 * expected, rel=1e-6)


def test_attention_mse_sum_known_values() -> None:
    student = torch.tensor([[[[1.0, 0.0], [0.5, 0.5]]]])  # (B 1, H 1, T 2, S 2)
    teacher = torch.tensor([[[[0.5, 0.5], [0.5, 0.5]], [[1.0, 0.0], [0.0, 1.0]]]])  # two heads, summed
    # head sums: student [[1, 0], [.5, .5]], teacher [[1.5, .5], [.5, 1.5]]: errors .5, .5, 0, 1
    assert attention_mse_sum(student, teacher).item() == pytest.approx((0.25 + 0.25 + 0 + 1) / 4)
    # head means: teacher [[.75, .25], [.25, .75]]: errors .25, .25, .25, .25
    assert attention_mse_sum(student, teacher, reduce_heads="mean").item() == pytest.approx(0.0625)
    # a mask keeps only position 0's pair: (1 - 1.5)^2 / 1^2
    assert attention_mse_sum(student, teacher, torch.tensor([[1, 0]])).item() == pytest.approx(0.25)
    with pytest.raises(ValueError, match="reduce_heads"):
        attention_mse_sum(student, teacher, reduce_heads="max")


def test_hidden_mse_with_projection_and_mask() -> None:
    s = torch.tensor([[[1.0], [2.0]]])
    t = torch.tensor([[[2.0, 2.0], [0.0, 0.0]]])
    proj = torch.nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        proj.weight.fill_(1.0)
    # projected student [[1, 1], [2, 2]] vs teacher [[2, 2], [0, 0]]: squared errors 1, 1, 4, 4
    assert hidden_mse(s, t, proj).item() == pytest.approx((1 + 1 + 4 + 4) / 4)
    assert hidden_mse(s, t, proj, torch.tensor([[1, 0]])).item() == pytest.approx(1.0)
