"""Beam search on hand-made step functions, where the right answer is known without running a model."""

from __future__ import annotations

import math

import torch

from ofa_grounding.config import GenerationConfig
from ofa_grounding.generation import allowed_token_ids, beam_search

V = 20  # toy vocabulary: 0..3 specials, ids 10..19 play the bins
CFG = GenerationConfig(beam_size=3, max_len_b=4, min_len=4, no_repeat_ngram_size=3, constraint_range=(10, 20))


def _fixed(logits_row: torch.Tensor, vocab_ids: torch.Tensor | None = None):
    """A step function returning the same logits for every row and step (restricted to vocab_ids)."""

    def step(tokens: torch.Tensor, reorder: torch.Tensor | None) -> torch.Tensor:
        row = logits_row if vocab_ids is None else logits_row[vocab_ids]
        return row.expand(tokens.shape[0], -1).clone()

    return step


def test_exactly_four_tokens_then_eos_and_scores() -> None:
    ids = allowed_token_ids(CFG, V)
    table = torch.full((5, V), -5.0)
    table[:, 12] = 3.0
    table[:, 15] = 2.0 + 0.1 * torch.arange(5)  # the runner-up is cheapest at the last coordinate
    table[:, 4:10] = 10.0  # masked by the constraint: must never appear
    calls = []

    def step(tokens: torch.Tensor, reorder: torch.Tensor | None) -> torch.Tensor:
        calls.append((tokens.clone(), reorder))
        return table[len(calls) - 1][ids].expand(tokens.shape[0], -1).clone()

    hyps = beam_search(step, 1, CFG, src_len=7, vocab_size=V, vocab_ids=ids)[0]
    assert len(calls) == 5 and calls[0][1] is None and (calls[0][0] == 0).all()
    # a fourth 12 would repeat the 3-gram (12, 12, 12), so the best box ends with 15
    assert hyps[0].tokens == [12, 12, 12, 15, 2]
    assert all(h.tokens[:4] != [12, 12, 12, 12] for h in hyps)
    lp = torch.log_softmax(table[:, ids], -1)  # normaliser over ids 0..3 and the range
    col = ids.tolist().index
    expected = [lp[0, col(12)], lp[1, col(12)], lp[2, col(12)], lp[3, col(15)], lp[4, 2]]
    assert all(abs(a - float(b)) < 1e-5 for a, b in zip(hyps[0].positional_scores, expected))
    assert abs(hyps[0].score - float(sum(expected)) / 5) < 1e-5
    assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
    assert all(not 4 <= t < 10 for h in hyps for t in h.tokens)
    assert all(h.tokens[-1] == 2 and len(h.tokens) == 5 for h in hyps)


def test_bos_and_unk_stay_open_under_the_constraint() -> None:
    logits = torch.full((V,), -5.0)
    logits[3] = 5.0  # <unk> is not masked by the reference's range constraint
    logits[1] = 9.0  # <pad> is always banned
    ids = allowed_token_ids(CFG, V)
    step = _fixed(logits, ids)
    best = beam_search(step, 1, CFG, src_len=5, vocab_size=V, vocab_ids=ids)[0][0]
    assert best.tokens[:3] == [3, 3, 3] and best.tokens[3] != 3 and 1 not in best.tokens


def test_full_vocabulary_equals_restricted_vocabulary() -> None:
    torch.manual_seed(0)
    table = torch.randn(6, V)  # logits depend on the step: look them up by the number of calls
    ids = allowed_token_ids(CFG, V)

    def make(vocab_ids):
        count = [0]

        def step(tokens, reorder):
            row = table[count[0]].clone()
            count[0] += 1
            if vocab_ids is None:
                row[4:10] = -math.inf  # what the reference does to the logits
                return row.expand(tokens.shape[0], -1).clone()
            return row[vocab_ids].expand(tokens.shape[0], -1).clone()

        return step

    a = beam_search(make(None), 1, CFG, 5, V, None)[0]
    b = beam_search(make(ids), 1, CFG, 5, V, ids)[0]
    assert [h.tokens for h in a] == [h.tokens for h in b]
    assert all(abs(x.score - y.score) < 1e-6 for x, y in zip(a, b))


def test_batch_rows_are_independent_and_reordered() -> None:
    """Two samples whose logits depend on their own prefix: each must follow its own beams."""
    def step(tokens: torch.Tensor, reorder: torch.Tensor | None) -> torch.Tensor:
        out = torch.full((tokens.shape[0], V), -4.0)
        sample = torch.arange(tokens.shape[0]) // CFG.beam_size
        out[sample == 0, 11] = 1.0
        out[sample == 1, 17] = 1.0
        out[torch.arange(tokens.shape[0]), 10 + tokens % 10] += 0.5
        return out

    hyps = beam_search(step, 2, CFG, 5, V)
    # Each sample repeats its own favourite; since a fourth repeat is banned, the cheapest way is to
    # spend the one other token first (10 follows BOS with the +0.5 bonus): logits -3.5+1+1.5+1.5 > 1+1.5+1.5-4.
    assert hyps[0][0].tokens == [10, 11, 11, 11, 2]
    assert hyps[1][0].tokens == [10, 17, 17, 17, 2]
    assert all(len(h) == CFG.beam_size for h in hyps)


def test_eos_allowed_early_when_min_len_is_small() -> None:
    cfg = GenerationConfig(beam_size=2, max_len_b=6, min_len=1, no_repeat_ngram_size=0, constraint_range=None)
    logits = torch.full((V,), -3.0)
    logits[2] = 4.0  # EOS best from step 1 on
    logits[3] = 1.0
    step = _fixed(logits)
    best = beam_search(step, 1, cfg, 5, V)[0][0]
    assert best.tokens == [3, 2]  # min_len 1: the first token may not be EOS


def test_repeated_ngrams_are_banned_by_hand() -> None:
    """n = 3, the row's last two tokens (5, 6) occur twice before: the tokens that completed them (7, and the
    <pad> of the unfilled future) are banned; id 4, outside the open set, has no column."""
    from ofa_grounding.generation import _block_repeated_ngrams

    tokens = torch.tensor([[0, 5, 6, 7, 5, 6, 1, 1], [0, 5, 6, 8, 9, 5, 1, 1]])
    column = torch.tensor([0, 1, 2, 3, -1, 4, 5, 6, 7, 8])  # ids 0..3 and 5..9 open
    lprobs = torch.zeros(2, 9)
    _block_repeated_ngrams(tokens, lprobs, step=5, n=3, column=column)
    assert lprobs[0].isinf().nonzero().flatten().tolist() == [1, 6]  # <pad> (column 1) and id 7 (column 6)
    # row 1 ends (9, 5), seen nowhere else: only its own window into the <pad> future bans <pad>
    assert lprobs[1].isinf().nonzero().flatten().tolist() == [1]


def test_nan_logits_end_only_their_own_sample() -> None:
    """A NaN logit makes its row's log-softmax NaN, read as -inf (the reference's rule): that sample gets no
    hypothesis, the other sample of the batch is unaffected."""
    ids = allowed_token_ids(CFG, V)
    row = torch.linspace(0, 1, V)[ids]

    def step(tokens: torch.Tensor, reorder: torch.Tensor | None) -> torch.Tensor:
        logits = row.expand(tokens.shape[0], -1).clone()
        logits[: CFG.beam_size, 5] = float("nan")  # every beam of sample 0
        return logits

    poisoned, fine = beam_search(step, 2, CFG, src_len=5, vocab_size=V, vocab_ids=ids)
    [alone] = beam_search(_fixed(torch.linspace(0, 1, V), ids), 1, CFG, src_len=5, vocab_size=V, vocab_ids=ids)
    assert poisoned == [] and [h.tokens for h in fine] == [h.tokens for h in alone] and fine
