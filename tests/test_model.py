"""Model internals: golden intermediate tensors of the reference, position buckets, cache consistency."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import TINY_CONFIG
from ofa_grounding.config import OFAConfig
from ofa_grounding.generation import beam_search
from ofa_grounding.model import (
    AttentionRecord,
    GroundingModel,
    OFAForInference,
    OFAModel,
    _add_image_rel,
    _gather_heads,
    _token_bucket_by_offset,
    image_grid_buckets,
    image_grid_ids,
)

# Absolute tolerances against golden.npz, with the largest differences measured on this project's
# machines in brackets. The golden tensors come from the reference on another machine: there our
# unfused float32 path matched the reference run on the same machine bit for bit (ResNet and encoder)
# and the golden file to 3.5e-5. The default inference path (BatchNorm folded into the convolutions,
# fused attention, KV-cached decoder) moves the numbers by reassociation only:
RESNET_ATOL = 1e-3  # values up to 114 [1.8e-4]
ENCODER_ATOL = 2e-4  # encoder output, values up to 4.3 [7.0e-5]; position embeddings [0]
LOGITS_ATOL = 3e-4  # raw decoder logits of all 5 steps x 5 beams, values up to 5 [1.3e-4]


@pytest.mark.reference
@pytest.mark.parametrize("case", ["fixed", "wide"])
def test_golden_intermediates(case: str, reference_grounder, golden: dict) -> None:
    g = reference_grounder
    ids = torch.tensor(golden[f"{case}/input_ids"])[None].to(g.device)
    pixels = torch.from_numpy(golden[f"{case}/patch_image"])[None].to(g.device)
    steps: list[torch.Tensor] = []
    with torch.inference_mode():  # no TF32 on GPUs (OFA_TEST_DEVICE=cuda): the fp32 Grounder turned it off
        features = g.model.ofa.encoder.embed_images(pixels)  # the backbone alone
        embeds, grid = g.model.image_features(pixels)  # from here on the interface the Grounder uses
        enc = g.model.encode(ids, embeds, grid)
        state = g.model.decoder_start(enc, 5, None)  # full vocabulary, to compare raw logits

        def step(tokens: torch.Tensor, reorder: torch.Tensor | None) -> torch.Tensor:
            if reorder is not None:
                g.model.decoder_reorder(state, reorder)
            logits = g.model.decoder_step(tokens, state)
            steps.append(logits)
            return logits[:, g._vocab_ids]

        hyps = beam_search(step, 1, g.generation, ids.shape[1], 59457, g._vocab_ids, device=g.device)
    features, steps = features.cpu(), [s.cpu() for s in steps]
    np.testing.assert_allclose(features[0], golden[f"{case}/resnet_out"], atol=RESNET_ATOL, rtol=0)
    np.testing.assert_allclose(enc.hidden[0].cpu(), golden[f"{case}/encoder_out"], atol=ENCODER_ATOL, rtol=0)
    np.testing.assert_allclose(enc.position[0].cpu(), golden[f"{case}/encoder_pos_embed"], atol=ENCODER_ATOL, rtol=0)
    assert not enc.pad_mask.any()
    np.testing.assert_allclose(steps[0][0], golden[f"{case}/dec_step0_logits"], atol=LOGITS_ATOL, rtol=0)
    logits = torch.stack(steps)  # (5 steps, 5 beams, V)
    np.testing.assert_allclose(logits[:, :, 58457:], golden[f"{case}/dec_steps_logits_bins"], atol=LOGITS_ATOL, rtol=0)
    np.testing.assert_allclose(logits[:, :, :4], golden[f"{case}/dec_steps_logits_special"], atol=LOGITS_ATOL, rtol=0)
    lprobs = torch.log_softmax(steps[0][0, g._vocab_ids.cpu()], -1)
    reference_lprobs = golden[f"{case}/dec_step0_lprobs_constrained"]
    np.testing.assert_allclose(lprobs, reference_lprobs[g._vocab_ids.cpu().numpy()], atol=LOGITS_ATOL, rtol=0)
    assert np.isneginf(np.delete(reference_lprobs, g._vocab_ids.cpu().numpy())).all()  # the rest is masked
    assert hyps[0][0].tokens == golden[f"{case}/best_tokens"].tolist()
    np.testing.assert_allclose(hyps[0][0].positional_scores, golden[f"{case}/best_positional_scores"], atol=1e-4)


def test_token_bucket_anchors() -> None:
    # anchors (offset -> bucket) from the reference's documentation, bucket size 256
    anchors = {0: 255, 1: 256, -1: 254, 127: 382, 128: 383, 129: 384, 130: 384, 135: 387, 150: 393,
               200: 411, 257: 426, 300: 436, -300: 74, 500: 467, 1000: 509, 1023: 510}
    table = _token_bucket_by_offset(256)
    assert {r: int(table[r + 1023]) for r in anchors} == anchors


def test_image_bucket_anchors() -> None:
    ids, buckets = image_grid_buckets(42, 32, 32)
    assert ids[0] == 1 and ids[1] == 2 and ids[32] == 43 and ids[-1] == 31 * 42 + 31 + 1
    # (id_a, id_b) -> bucket from the reference's documentation: [1,1]=3444, [1,2]=3443, [2,1]=3445, [1,43]=3361
    assert buckets[0, 0] == 3444 and buckets[0, 1] == 3443 and buckets[1, 0] == 3445 and buckets[0, 32] == 3361
    with pytest.raises(ValueError, match="exceeds image_bucket_size"):
        image_grid_buckets(42, 43, 10)


@pytest.fixture(scope="module")
def tiny() -> OFAModel:
    torch.manual_seed(1)
    from ofa_grounding.model import init_weights

    return init_weights(OFAModel(OFAConfig(**TINY_CONFIG)), std=0.3).eval()


@pytest.fixture(scope="module")
def entangled() -> OFAModel:
    torch.manual_seed(1)
    from ofa_grounding.model import init_weights

    return init_weights(OFAModel(OFAConfig(**TINY_CONFIG, entangle_position_embedding=True)), std=0.3).eval()


@pytest.mark.parametrize("model_name", ["tiny", "entangled"])
def test_cached_steps_equal_full_decoder(model_name: str, request: pytest.FixtureRequest) -> None:
    """Incremental decoding with the KV cache gives the teacher-forced decoder's logits (also with positions
    entangled into the token values, where each step must add its own position)."""
    tiny = request.getfixturevalue(model_name)
    torch.manual_seed(2)
    ids = torch.tensor([[0, 61, 976, 473, 5, 2], [0, 61, 976, 2, 1, 1]])
    pixels = torch.randn(2, 3, 64, 64)
    prefix = torch.tensor([[0, 58500, 58600, 58700, 58800], [0, 59000, 3, 58457, 59456]])
    with torch.no_grad():
        enc = tiny.encode(ids, pixels)
        full = tiny.decoder(prefix, enc)  # (2, 5, V)
        state = tiny.decoder.start(enc, 5)
        steps = torch.stack([tiny.decoder.step(prefix[:, t], state) for t in range(5)], dim=1)
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=1e-5)


def test_entangled_positions_change_the_output(tiny: OFAModel, entangled: OFAModel) -> None:
    """Same weights, entangle on/off: different logits (checked against modelscope 1.40.2 separately, see
    docs/fidelity.md)."""
    entangled.load_state_dict(tiny.state_dict())
    ids, pixels = torch.tensor([[0, 61, 976, 2]]), torch.randn(1, 3, 64, 64)
    prefix = torch.tensor([[0, 58500, 58600]])
    with torch.no_grad():
        a, b = tiny(ids, pixels, prefix), entangled(ids, pixels, prefix)
    assert (a - b).abs().max() > 1e-2


def test_padding_does_not_change_results(tiny: OFAModel) -> None:
    torch.manual_seed(3)
    pixels = torch.randn(1, 3, 64, 64)
    short = torch.tensor([[0, 61, 976, 2]])
    padded = torch.tensor([[0, 61, 976, 2, 1, 1, 1]])
    with torch.no_grad():
        a = tiny.encode(short, pixels)
        b = tiny.encode(padded, pixels)
        torch.testing.assert_close(b.hidden[:, : a.hidden.shape[1]], a.hidden, atol=1e-5, rtol=1e-5)
        prefix = torch.tensor([[0, 58500, 58600]])
        torch.testing.assert_close(tiny.decoder(prefix, b), tiny.decoder(prefix, a), atol=1e-5, rtol=1e-5)


def test_shared_attention_bias_has_one_table() -> None:
    model = OFAModel(OFAConfig(**{**TINY_CONFIG, "share_attn_bias": True}))
    assert len(model.encoder.token_rel_pos_table_list) == 1 and len(model.decoder.token_rel_pos_table_list) == 1


def test_unsupported_configuration_is_refused() -> None:
    with pytest.raises(ValueError, match="normformer=False"):
        OFAModel(OFAConfig(**{**TINY_CONFIG, "normformer": False}))
    with pytest.raises(ValueError, match="resnet_type"):
        OFAConfig(resnet_type="resnet9")


def test_recorded_attention_matches_the_fused_path(tiny_model_dir) -> None:
    """Distillation's explicit attention (probabilities recorded) computes what the fused kernel does."""
    from ofa_grounding.checkpoint import read_checkpoint

    model = read_checkpoint(tiny_model_dir).model.eval()
    ids = torch.tensor([[0, 100, 200, 2], [0, 300, 2, 1]])
    images = torch.randn(2, 3, 64, 64)
    prev = torch.tensor([[0, 58500, 58600, 58700, 58800]] * 2)
    with torch.no_grad():
        fused = model(ids, images, prev)
        record = AttentionRecord(frozenset({0}), frozenset({len(model.decoder.layers) - 1}))
        recorded = model(ids, images, prev, record=record)
    torch.testing.assert_close(recorded, fused, rtol=1e-4, atol=1e-4)
    assert len(record.maps) == 2  # the two layers asked for, encoder first
    enc = record.maps[0]
    assert enc.shape == (2, model.config.encoder_attention_heads, 16 + 4, 16 + 4)
    torch.testing.assert_close(enc.sum(-1), torch.ones(enc.shape[:-1]), rtol=0, atol=1e-5)
    assert enc[1, :, :, -1].abs().max() == 0  # the padded text position gets no attention
    dec = record.maps[1]
    assert dec.shape == (2, model.config.decoder_attention_heads, 5, 5) and dec[0, 0, 0, 1:].abs().max() == 0


@pytest.mark.parametrize("bucket_size, grid", [(42, (32, 32)), (42, (1, 1)), (8, (3, 8)), (8, (8, 5)), (5, (5, 5))])
def test_strided_image_bias_equals_the_gather(bucket_size: int, grid: tuple[int, int]) -> None:
    """Inference adds the image relative bias from a strided view; it must equal adding OFA's bucket gather,
    also into blocks of a larger buffer (the encoder's (S, S) bias, whose rows are longer than P)."""
    torch.manual_seed(5)
    table = torch.nn.Embedding((2 * bucket_size - 1) ** 2 + 3, 4)
    ids, buckets = image_grid_buckets(bucket_size, *grid)
    assert torch.equal(ids, image_grid_ids(bucket_size, *grid))
    P = grid[0] * grid[1]
    base, out = torch.randn(4, P + 3, P + 3), torch.zeros(4, P + 3, P + 3)
    _add_image_rel(base[:, :P, :P], table.weight.detach(), bucket_size, grid, out[:, :P, :P])
    assert torch.equal(out[:, :P, :P], base[:, :P, :P] + _gather_heads(table, buckets))
    assert out[:, P:].abs().max() == 0 and out[:, :, P:].abs().max() == 0  # nothing written outside the block


def test_inference_and_training_encoders_agree(tiny: OFAModel) -> None:
    """`Encoder.infer` takes the strided bias, one shared buffer and per-length rows instead of a padding
    mask; `forward`, the gather and the mask, whether autograd is on or not. Real (unpadded) positions agree."""
    torch.manual_seed(4)
    ids = torch.tensor([[0, 61, 976, 2, 1, 1], [0, 61, 976, 5, 7, 2], [0, 9, 2, 1, 1, 1], [0, 8, 976, 4, 2, 1]])
    pixels = torch.randn(2, 3, 64, 64)
    image_index = torch.tensor([0, 1, 0, 1])
    with torch.no_grad():
        embeds, grid = tiny.encoder.embed_image(pixels)
        fast = tiny.encoder.infer(ids, embeds[image_index], grid)
        slow_no_grad = tiny.encode(ids, pixels, image_index)
    slow = tiny.encode(ids, pixels, image_index)
    assert slow.hidden.requires_grad
    real = ~fast.pad_mask
    assert torch.equal(real, ~slow.pad_mask) and real.sum() == 4 * 16 + 4 + 6 + 3 + 5
    torch.testing.assert_close(slow.hidden.detach()[real], fast.hidden[real], rtol=0, atol=1e-5)
    # the same path with or without autograd (the attention kernel may differ: float rounding only)
    torch.testing.assert_close(slow_no_grad.hidden, slow.hidden.detach(), rtol=0, atol=1e-5)
    with torch.no_grad():  # a padded sample gives what it gives alone
        alone = tiny.encoder.infer(ids[2:3, :3], embeds[:1], grid).hidden
    torch.testing.assert_close(fast.hidden[2, :16 + 3], alone[0], rtol=0, atol=1e-5)


def test_grid_buckets_first_made_in_inference_mode_still_train() -> None:
    """The bucket tables are cached; one first built under inference_mode must still serve training."""
    with torch.inference_mode():
        image_grid_buckets(7, 3, 2)
    _, buckets = image_grid_buckets(7, 3, 2)
    table = torch.nn.Embedding(13 * 13 + 3, 2)
    _gather_heads(table, buckets).sum().backward()
    assert table.weight.grad is not None and table.weight.grad.sum() == 2 * 6 * 6


def test_compact_token_table_is_exact(tiny: OFAModel) -> None:
    """A float16-exact token table is stored in float16 and every output stays bitwise the same; a table
    that float16 would round is left alone."""
    torch.manual_seed(6)
    ids, pixels = torch.tensor([[0, 61, 976, 2], [0, 5, 2, 1]]), torch.randn(2, 3, 64, 64)
    prev, vocab = torch.tensor([[0, 58500, 58600]] * 2), torch.arange(58400, 59000)
    assert not tiny.compact_token_table_()  # random float32 init: not representable
    model = OFAModel(tiny.config).eval()
    model.load_state_dict(tiny.state_dict())
    with torch.no_grad():
        model.encoder.embed_tokens.weight.copy_(model.encoder.embed_tokens.weight.half().float())
        before = model(ids, pixels, prev, vocab)
        enc = model.encode(ids, pixels)
        step_before = model.decoder.step(prev[:, 0], model.decoder.start(enc, 3, vocab))
        assert model.compact_token_table_()
        assert model.decoder.embed_tokens.weight.dtype == torch.float16
        assert torch.equal(model(ids, pixels, prev, vocab), before)
        enc = model.encode(ids, pixels)
        assert torch.equal(model.decoder.step(prev[:, 0], model.decoder.start(enc, 3, vocab)), step_before)


def test_prepared_for_inference_leaves_the_model_alone(tiny: OFAModel) -> None:
    """The inference copy folds BatchNorm and compacts the token table; the model it came from keeps its
    weights, its BatchNorm layers and its training mode, so it can still be trained or saved."""
    tiny.train()
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    prepared = tiny.prepared_for_inference("fp32")
    assert isinstance(prepared, GroundingModel) and isinstance(prepared, OFAForInference)
    assert prepared.ofa is not tiny and prepared.ofa.encoder.embed_images.fused
    assert not tiny.encoder.embed_images.fused and tiny.training
    after = tiny.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert prepared.num_parameters() == tiny.num_parameters()  # as stored, before folding
    assert all(not p.requires_grad for p in prepared.ofa.parameters())


def test_inference_interface_gives_the_teacher_forced_logits(tiny: OFAModel) -> None:
    """Through the interface (image features once, encoder, cached decoder steps) the logits are those of
    the plain teacher-forced forward pass of the unprepared model."""
    torch.manual_seed(7)
    ids = torch.tensor([[0, 61, 976, 473, 5, 2], [0, 61, 976, 2, 1, 1]])
    pixels = torch.randn(2, 3, 64, 64)
    prefix = torch.tensor([[0, 58500, 58600, 58700], [0, 59000, 3, 58457]])
    with torch.no_grad():
        full = tiny.eval()(ids, pixels, prefix)
    m = tiny.prepared_for_inference("fp32")
    features, grid = m.image_features(pixels)
    state = m.decoder_start(m.encode(ids, features, grid), 4, None)
    steps = torch.stack([m.decoder_step(prefix[:, t], state) for t in range(4)], dim=1)
    torch.testing.assert_close(steps, full, atol=1e-4, rtol=1e-4)


def test_bad_inference_arguments(tiny: OFAModel) -> None:
    with pytest.raises(ValueError, match="precision must be one of"):
        tiny.prepared_for_inference("int8")
    with pytest.raises(TypeError, match="give precision= only"):
        tiny.prepared_for_inference("fp32", dtype="fp32")


def test_dtype_is_a_deprecated_alias_of_precision(tiny: OFAModel) -> None:
    with pytest.warns(DeprecationWarning, match=r"prepared_for_inference\(dtype=...\) is deprecated"):
        m = tiny.prepared_for_inference(dtype="fp32")
    assert m.precision == "fp32"
    with pytest.warns(DeprecationWarning, match="use .precision"):
        assert m.dtype == "fp32"


def test_image_index_equals_repeated_images(tiny_model_dir) -> None:
    from ofa_grounding.checkpoint import read_checkpoint

    model = read_checkpoint(tiny_model_dir).model.eval()
    ids = torch.tensor([[0, 100, 200, 2], [0, 300, 2, 1], [0, 5, 6, 2]])
    images = torch.randn(2, 3, 64, 64)
    index = torch.tensor([1, 0, 1])
    prev = torch.tensor([[0, 58500, 58600, 58700, 58800]] * 3)
    with torch.no_grad():
        shared = model(ids, images, prev, image_index=index)
        repeated = model(ids, images[index], prev)
    torch.testing.assert_close(shared, repeated, rtol=0, atol=1e-5)


def test_meta_model_skips_init_on_this_thread_only() -> None:
    """Loading builds the model on the meta device without initialising it through a per-thread torch function
    mode: torch.nn.init is never patched, and another thread initialising meanwhile draws real numbers."""
    import threading

    from ofa_grounding.model import _SkipInit, meta_model

    originals = {name: getattr(torch.nn.init, name) for name in dir(torch.nn.init)}
    drawn: dict[str, torch.Tensor] = {}

    def other_thread() -> None:
        t = torch.zeros(64)
        torch.nn.init.normal_(t)
        torch.nn.init.kaiming_uniform_(w := torch.zeros(8, 8))
        drawn.update(t=t, w=w)

    with torch.device("meta"), _SkipInit():
        skipped = torch.nn.init.normal_(torch.empty(64))
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
    assert skipped.is_meta
    assert drawn["t"].device.type == "cpu" and drawn["t"].std() > 0.5 and drawn["w"].abs().sum() > 0
    assert {name: getattr(torch.nn.init, name) for name in dir(torch.nn.init)} == originals
    model = meta_model(OFAConfig(**TINY_CONFIG))
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert torch.nn.init.normal_(torch.zeros(64)).std() > 0.5  # and after: as usual
