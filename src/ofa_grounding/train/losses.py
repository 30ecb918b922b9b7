"""Training losses."""

from __future__ import annotations

import torch

__all__ = ["label_smoothed_nll"]


def label_smoothed_nll(lprobs: torch.Tensor, target: torch.Tensor, epsilon: float) -> tuple[torch.Tensor, torch.Tensor]:
    """OFA's label-smoothed cross-entropy, summed over tokens: (loss, nll).

    lprobs (N, V) log-probabilities over the candidate ids (OFA-Compress restricts them to ids 0..3 and
    the bins, which is what the caller passes), target (N,) column indices. Per token:
    (1 - eps - eps_i) * nll + eps_i * sum_v(-log p_v), with eps_i = eps / (V - 1).
    """
    nll = -lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    smooth = -lprobs.sum(-1)
    eps_i = epsilon / (lprobs.shape[-1] - 1)
    loss = (1.0 - epsilon - eps_i) * nll + eps_i * smooth
    return loss.sum(), nll.sum()
