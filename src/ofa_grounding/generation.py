"""Constrained beam search, step for step as the reference's fairseq-style `SequenceGenerator`.

The search never sees the model: it calls `step_fn(newest_tokens, reorder)` once per position, which
returns logits for the ids in `vocab_ids` (the model keeps its own key/value cache and follows
`reorder`, the parent row chosen for every row). Restricting logits to the ids the constraint leaves
open is exact: the reference sets the other logits to -inf before its log-softmax, so they add nothing
to the normaliser.

Reference behaviours kept on purpose (see the README's parity section):
- the range constraint leaves ids 0..3 (<s>, <pad>, </s>, <unk>) open besides the range; <pad> is then
  banned, EOS banned before `min_len` and forced at `max_len`, so <s> and <unk> stay selectable;
- no-repeat-n-gram blocking over the whole token buffer (including its <pad>-filled future);
- step 0 expands beam 0 only; later steps take top-2K over beam-major (K * V) cumulative scores;
- positional scores are differences of float32 cumulative sums; score = cumulative / length ** penalty.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .config import GenerationConfig

__all__ = ["Hypothesis", "allowed_token_ids", "beam_search"]

StepFn = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]


@dataclass
class Hypothesis:
    tokens: list[int]  # generated ids, ending with EOS (BOS excluded)
    score: float  # cumulative log-prob / length ** len_penalty
    positional_scores: list[float]  # log-prob of each generated token


def allowed_token_ids(cfg: GenerationConfig, vocab_size: int, device: torch.device | str = "cpu"
                      ) -> torch.Tensor | None:
    """The ids decoding may produce, sorted, whose logits the search needs (its `vocab_ids`): 0..3 plus the
    constraint range, as the reference's constraint leaves them (None: no constraint, every id)."""
    if cfg.constraint_range is None:
        return None
    lo, hi = cfg.constraint_range
    return torch.cat([torch.arange(4), torch.arange(lo, min(hi, vocab_size))]).to(device)


@torch.no_grad()
def beam_search(step_fn: StepFn, batch_size: int, cfg: GenerationConfig, src_len: int, vocab_size: int,
                vocab_ids: torch.Tensor | None = None, device: torch.device | str = "cpu",
                max_positions: int = 1024, bos: int = 0, pad: int = 1, eos: int = 2, unk: int = 3,
                unk_penalty: float = 0.0) -> list[list[Hypothesis]]:
    """Run the search for `batch_size` samples; returns per sample its K hypotheses, best first."""
    B, K = batch_size, cfg.beam_size
    N = B * K
    max_len = min(int(cfg.max_len_a * src_len + cfg.max_len_b), max_positions - 1)
    if vocab_ids is None:
        vocab_ids = torch.arange(vocab_size, device=device)
    column = torch.full((vocab_size,), -1, dtype=torch.long, device=device)  # id -> logit column
    column[vocab_ids] = torch.arange(len(vocab_ids), device=device)
    c_pad, c_eos, c_unk = (int(column[i]) for i in (pad, eos, unk))
    if min(c_pad, c_eos, c_unk) < 0:
        raise ValueError("vocab_ids must include the pad, eos and unk ids")

    tokens = torch.full((N, max_len + 2), pad, dtype=torch.long, device=device)
    tokens[:, 0] = bos
    scores = torch.zeros(N, max_len + 1, dtype=torch.float32, device=device)
    finalized: list[list[Hypothesis]] = [[] for _ in range(B)]
    finished = [False] * B
    cands_to_ignore = torch.zeros(B, K, dtype=torch.bool, device=device)
    bbsz_offsets = (torch.arange(B, device=device) * K).unsqueeze(1)
    n_cand = min(2 * K, K * vocab_size - 1)
    cand_offsets = torch.arange(n_cand, device=device)
    reorder = None

    for step in range(max_len + 1):
        logits = step_fn(tokens[:, step], reorder)
        if cfg.temperature != 1.0:
            logits = logits / cfg.temperature
        lprobs = torch.log_softmax(logits.float(), dim=-1)
        lprobs.masked_fill_(lprobs != lprobs, -math.inf)  # NaN -> -inf (a mask, not indexing: no host sync)
        lprobs[:, c_pad] = -math.inf
        lprobs[:, c_unk] -= unk_penalty
        if step >= max_len:
            lprobs[:, :c_eos] = -math.inf
            lprobs[:, c_eos + 1:] = -math.inf
        elif step < cfg.min_len:
            lprobs[:, c_eos] = -math.inf
        n = cfg.no_repeat_ngram_size
        if n > 0 and step + 2 - n >= 0:
            _block_repeated_ngrams(tokens, lprobs, step, n, column)

        V = lprobs.shape[1]
        lp = lprobs.view(B, K, V)
        lp = lp[:, :1] if step == 0 else lp + scores.view(B, K, -1)[:, :, step - 1:step]
        cand_scores, flat_idx = torch.topk(lp.reshape(B, -1), k=min(n_cand, lp.shape[1] * V))
        cand_beams = torch.div(flat_idx, V, rounding_mode="floor")
        cand_ids = vocab_ids[flat_idx.fmod(V)]
        cand_bbsz = cand_beams + bbsz_offsets

        eos_mask = cand_ids.eq(eos) & cand_scores.ne(-math.inf)
        eos_mask[:, :K] &= ~cands_to_ignore
        # EOS is banned before min_len (unless forced at max_len): no hypothesis can end, and the host need
        # not wait for the device to learn that
        if (step >= cfg.min_len or step >= max_len) and eos_mask[:, :K].any():
            _finalize(step, cand_bbsz[:, :K][eos_mask[:, :K]], cand_scores[:, :K][eos_mask[:, :K]],
                      tokens, scores, finalized, finished, K, max_len, cfg, eos)
        if all(finished):
            break

        # Keep the best K candidates that did not just end; rebuild the rows from their parents.
        eos_mask[:, :K] = ~((~cands_to_ignore) & (~eos_mask[:, :K]))
        active_mask = eos_mask.long() * n_cand + cand_offsets[: eos_mask.shape[1]]
        new_ignore, active_hypos = torch.topk(active_mask, k=K, dim=1, largest=False)
        cands_to_ignore = new_ignore.ge(n_cand)[:, :K]
        reorder = torch.gather(cand_bbsz, 1, active_hypos).view(-1)
        tokens[:, : step + 1] = tokens.index_select(0, reorder)[:, : step + 1]
        tokens.view(B, K, -1)[:, :, step + 1] = torch.gather(cand_ids, 1, active_hypos)
        if step > 0:
            scores[:, :step] = scores.index_select(0, reorder)[:, :step]
        scores.view(B, K, -1)[:, :, step] = torch.gather(cand_scores, 1, active_hypos)

    return [sorted(hyps, key=lambda h: -h.score) for hyps in finalized]  # stable: ties keep search order


def _block_repeated_ngrams(tokens: torch.Tensor, lprobs: torch.Tensor, step: int, n: int,
                           column: torch.Tensor) -> None:
    """Ban, per row, every token that would complete an n-gram already present in the row's buffer."""
    key = tokens[:, step + 2 - n: step + 1]  # (N, n-1): the row's last n-1 tokens
    windows = tokens.unfold(1, n, 1)  # (N, W, n) over the whole buffer, <pad> future included
    match = (windows[:, :, :-1] == key[:, None, :]).all(dim=-1)  # (N, W)
    cols = column[windows[:, :, -1]]  # (N, W): the column each window would complete, -1 outside the open set
    banned = match & (cols >= 0)  # banned ids outside the open set are already impossible
    # counted per (row, column) with dense tensors rather than gathered with nonzero(): no host sync
    counts = torch.zeros(lprobs.shape, dtype=torch.int32, device=lprobs.device)
    counts.scatter_add_(1, cols.clamp(min=0), banned.int())
    lprobs.masked_fill_(counts > 0, -math.inf)


def _finalize(step: int, bbsz_idx: torch.Tensor, eos_scores: torch.Tensor, tokens: torch.Tensor,
              scores: torch.Tensor, finalized: list[list[Hypothesis]], finished: list[bool], K: int,
              max_len: int, cfg: GenerationConfig, eos: int) -> None:
    hyp_tokens = tokens.index_select(0, bbsz_idx)[:, 1: step + 2].clone()
    hyp_tokens[:, step] = eos
    pos_scores = scores.index_select(0, bbsz_idx)[:, : step + 1].clone()
    pos_scores[:, step] = eos_scores
    pos_scores[:, 1:] = pos_scores[:, 1:] - pos_scores[:, :-1]
    if cfg.normalize_scores:
        eos_scores = eos_scores / (step + 1) ** cfg.len_penalty
    for row, (idx, score) in enumerate(zip(bbsz_idx.tolist(), eos_scores.tolist())):
        sample = idx // K
        if finished[sample] or len(finalized[sample]) >= K:
            continue
        finalized[sample].append(Hypothesis(hyp_tokens[row].tolist(), score, pos_scores[row].tolist()))
    for sample in range(len(finalized)):
        if not finished[sample] and (step == max_len or len(finalized[sample]) == K):
            finished[sample] = True

