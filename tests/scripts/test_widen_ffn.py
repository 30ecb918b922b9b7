"""scripts/widen_ffn.py: a copy with wider FFNs answers as the original, and its copied units can drift apart."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ofa_grounding import Grounder, load_model

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "shapes.png"


@pytest.fixture(scope="module")
def widen_ffn(load_script):
    return load_script("widen_ffn")


def test_wider_copy_gives_the_same_boxes(widen_ffn, tmp_path: Path) -> None:
    out = tmp_path / "wider"
    assert widen_ffn.main(["demo", str(out), "--factor", "2"]) == 0
    loaded = load_model(out)
    original_cfg = load_model("demo").model.config
    assert loaded.model.config.encoder_ffn_dim == 2 * original_cfg.encoder_ffn_dim
    assert loaded.model.config.decoder_ffn_dim == 2 * original_cfg.decoder_ffn_dim
    texts = ["the red circle", "the second square from the left", "the purple star"]
    wider = Grounder.from_pretrained(out).predict(EXAMPLE, texts)
    original = Grounder.from_pretrained("demo", zoom=None, calibration=None).predict(EXAMPLE, texts)
    assert [r.box for r in wider] == [r.box for r in original]
    assert [r.score for r in wider] == pytest.approx([r.score for r in original], abs=1e-4)


def test_copies_get_different_gradients(widen_ffn) -> None:
    model = widen_ffn.widen(load_model("demo").model.float(), 2).train()
    n = model.encoder.layers[0].fc1.out_features // 2
    fc2 = model.encoder.layers[0].fc2.weight
    assert not torch.allclose(fc2[:, :n], fc2[:, n:])  # uneven shares of each original column
    assert torch.allclose(fc2[:, :n] + fc2[:, n:], load_model("demo").model.encoder.layers[0].fc2.weight.float(),
                          atol=1e-6)
    logits = model(torch.randint(4, 1000, (2, 6)), torch.randn(2, 3, 64, 64), torch.randint(4, 1000, (2, 3)))
    logits.logsumexp(-1).sum().backward()
    grad = model.encoder.layers[0].fc1.weight.grad
    assert not torch.allclose(grad[:n], grad[n:])


def test_refuses_a_factor_below_two_and_an_existing_folder(widen_ffn, tmp_path: Path, capsys) -> None:
    assert widen_ffn.main(["demo", str(tmp_path / "x"), "--factor", "1"]) == 2
    assert "--factor" in capsys.readouterr().err
    assert widen_ffn.main(["demo", str(tmp_path), "--factor", "2"]) == 2
    assert "exists" in capsys.readouterr().err
