"""Training losses: OFA's task loss, our soft-bin option, and OFA-Compress's distillation terms."""

from __future__ import annotations

import torch

__all__ = ["attention_mse_sum", "hidden_mse", "kd_cross_entropy", "label_smoothed_nll", "soft_bin_cross_entropy"]

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


def kd_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                     temperature: float = 1.0) -> torch.Tensor:
    """OFA-Compress's `ce_with_mask`, summed over tokens: sum_v -softmax(z_T / T)_v * log_softmax(z_S / T)_v.

    Both (N, V') are logits over the open ids only (0..3 and the bins): OFA-Compress masks every other
    id to -inf in both models before the loss, which is the same as leaving those columns out. No T^2
    factor, as there.
    """
    p_teacher = torch.softmax(teacher_logits.float() / temperature, dim=-1)
    return -(p_teacher * torch.log_softmax(student_logits.float() / temperature, dim=-1)).sum()


def attention_mse_sum(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None,
                      reduce_heads: str = "sum") -> torch.Tensor:
    """TextBrewer's `attention_mse_sum`: attention maps (B, H, T, S) summed over heads, then mean squared error.

    Head counts may differ (the sum removes that axis). `mask` (B, T) marks valid positions of a
    square (T == S) map, as OFA-Compress passes for the decoder: the mean is then over valid (i, j)
    pairs. `reduce_heads="mean"` compares head means instead (ours; with different head counts the
    published sum cannot reach zero, see ofa-training.md b.3).
    """
    if reduce_heads not in ("sum", "mean"):
        raise ValueError(f"reduce_heads must be 'sum' or 'mean', got {reduce_heads!r}")
    reduce = torch.sum if reduce_heads == "sum" else torch.mean
    s, t = reduce(student.float(), dim=1), reduce(teacher.float(), dim=1)
    if mask is None:
        return torch.nn.functional.mse_loss(s, t)
    m = mask.to(s.dtype)
    pair = m[:, :, None] * m[:, None, :]
    return ((s - t) ** 2 * pair).sum() / (m.sum(-1) ** 2).sum()


def hidden_mse(student: torch.Tensor, teacher: torch.Tensor, projection: torch.nn.Module | None = None,
               mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error of hidden states (B, T, d_s) vs (B, T, d_t), through a learned projection where
    the widths differ; `mask` (B, T) leaves padded positions out."""
    s = projection(student) if projection is not None else student
    err = (s.float() - teacher.float()) ** 2
    if mask is None:
        return err.mean()
    m = mask.to(err.dtype)[..., None]
    return (err * m).sum() / (m.sum() * err.shape[-1])
