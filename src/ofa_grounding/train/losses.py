"""Training losses."""

from __future__ import annotations

import torch

__all__ = ["label_smoothed_nll", "soft_bin_cross_entropy"]


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


def soft_bin_cross_entropy(lprobs: torch.Tensor, target: torch.Tensor, epsilon: float, sigma: float,
                           first_bin: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Our option (not OFA's): coordinate targets spread as a Gaussian of `sigma` bins over their neighbours.

    Columns >= `first_bin` are bins in order; a bin target gets (1 - eps) * Gaussian(bin, sigma) + eps / V,
    any other target (EOS) the usual label smoothing. A prediction a few bins off then earns credit, which
    exact-bin cross-entropy never gives. Returns (loss, nll) summed over tokens, nll as in `label_smoothed_nll`.
    """
    V = lprobs.shape[-1]
    nll = -lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    is_bin = target >= first_bin
    q = torch.zeros_like(lprobs)
    q[~is_bin] = torch.nn.functional.one_hot(target[~is_bin], V).to(q.dtype)
    grid = torch.arange(V - first_bin, device=lprobs.device, dtype=lprobs.dtype)
    centre = (target[is_bin] - first_bin).to(lprobs.dtype)
    weights = torch.exp(-0.5 * ((grid[None, :] - centre[:, None]) / sigma) ** 2)
    q[is_bin, first_bin:] = weights / weights.sum(-1, keepdim=True)
    q = (1 - epsilon) * q + epsilon / V
    return -(q * lprobs).sum(), nll.sum()
