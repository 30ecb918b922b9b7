"""scripts/deepen_model.py: a deeper copy answers exactly as the original, and its new layers can learn."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ofa_grounding import Grounder, load_model

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "shapes.png"


@pytest.fixture(scope="module")
def deepen_model(load_script):
    return load_script("deepen_model")


def test_layer_plan(deepen_model) -> None:
    assert deepen_model.layer_plan(2, 4) == [(0, False), (0, True), (1, False), (1, True)]
    assert deepen_model.layer_plan(2, 3) == [(0, False), (0, True), (1, False)]
    assert deepen_model.layer_plan(2, 2) == [(0, False), (1, False)]


def test_deeper_copy_gives_the_same_boxes(deepen_model, tmp_path: Path) -> None:
    out = tmp_path / "deeper"
    assert deepen_model.main(["demo", str(out), "--encoder-layers", "3", "--decoder-layers", "4"]) == 0
    loaded = load_model(out)
    assert (loaded.model.config.encoder_layers, loaded.model.config.decoder_layers) == (3, 4)
    texts = ["the red circle", "the second square from the left", "the purple star"]
    deeper = Grounder.from_pretrained(out).predict(EXAMPLE, texts)
    original = Grounder.from_pretrained("demo", zoom=None, calibration=None).predict(EXAMPLE, texts)
    assert [r.box for r in deeper] == [r.box for r in original]
    assert [r.score for r in deeper] == pytest.approx([r.score for r in original], abs=1e-5)
    # The new layers' gates are shut but not stuck: a gradient reaches them.
    model = loaded.model.train()
    logits = model(torch.randint(4, 1000, (1, 6)), torch.randn(1, 3, 64, 64), torch.randint(4, 1000, (1, 3)))
    logits.logsumexp(-1).sum().backward()
    assert model.encoder.layers[1].fc2.weight.grad.abs().sum() > 0
    assert model.decoder.layers[3].cross_attn_mid_layer_norm.weight.grad.abs().sum() > 0


def test_refuses_fewer_layers_and_an_existing_folder(deepen_model, tmp_path: Path, capsys) -> None:
    with pytest.raises(ValueError, match="can only add layers"):
        deepen_model.deepen(load_model("demo").model, 1, 2)
    assert deepen_model.main(["demo", str(tmp_path), "--encoder-layers", "4", "--decoder-layers", "4"]) == 2
    assert "exists" in capsys.readouterr().err
