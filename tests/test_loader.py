"""`load_model`: one path from a name to a model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ofa_grounding.errors import CheckpointError
from ofa_grounding.loader import DEFAULT_MODEL, load_model
from ofa_grounding.presets import get_preset


def test_no_name_is_the_bundled_demo_model() -> None:
    ckpt = load_model()
    assert ckpt.path == DEFAULT_MODEL and ckpt.layout == "ours"
    assert ckpt.model.config.d_model == get_preset("demo").model.d_model


def test_a_preset_name_gives_fresh_weights_only_when_asked() -> None:
    with pytest.raises(CheckpointError, match="no such model directory"):  # never random weights by accident
        load_model("demo")
    a = load_model("demo", allow_preset=True)
    b = load_model("demo", allow_preset=True)
    assert a.layout == "preset" and a.model.config == get_preset("demo").model
    shipped = load_model().model.state_dict()
    fresh = a.model.state_dict()
    assert not torch.equal(fresh["encoder.layers.0.fc1.weight"], shipped["encoder.layers.0.fc1.weight"])
    assert not torch.equal(fresh["encoder.layers.0.fc1.weight"], b.model.state_dict()["encoder.layers.0.fc1.weight"])


def test_a_directory_with_dtype_and_device(tiny_model_dir: Path) -> None:
    ckpt = load_model(tiny_model_dir, dtype=torch.bfloat16, device="cpu")
    assert ckpt.path == Path(tiny_model_dir)
    assert {p.dtype for p in ckpt.model.parameters()} == {torch.bfloat16}
    assert {p.device.type for p in ckpt.model.parameters()} == {"cpu"}


def test_an_existing_path_wins_over_a_preset_name(tiny_model_dir: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    shutil.copytree(tiny_model_dir, tmp_path / "demo")
    monkeypatch.chdir(tmp_path)
    ckpt = load_model("demo", allow_preset=True)
    assert ckpt.layout == "ours" and ckpt.model.config.d_model == 32


def test_unknown_names_fail_with_one_line(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such model directory or file") as info:
        load_model(tmp_path / "missing")
    assert "\n" not in str(info.value)
