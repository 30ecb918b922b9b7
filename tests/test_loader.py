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
    assert ckpt.path == DEFAULT_MODEL and ckpt.layout == "safetensors"
    assert ckpt.model.config.d_model == get_preset("demo").model.d_model


def test_a_preset_gives_fresh_weights_only_when_asked() -> None:
    with pytest.raises(CheckpointError, match="random weights"):  # never random weights by accident
        load_model("preset:demo")
    assert load_model("demo").path == DEFAULT_MODEL  # the bundled model's name: its trained weights
    a = load_model("preset:demo", allow_preset=True)
    b = load_model("preset:demo", allow_preset=True)
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


def test_an_existing_path_wins_over_a_model_name(tiny_model_dir: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    shutil.copytree(tiny_model_dir, tmp_path / "demo")
    monkeypatch.chdir(tmp_path)
    for name in ("demo", "preset:demo"):  # a folder of that name here wins over the bundled model and the preset
        if name == "preset:demo":
            shutil.copytree(tiny_model_dir, tmp_path / name)
        ckpt = load_model(name, allow_preset=True)
        assert ckpt.layout == "safetensors" and ckpt.model.config.d_model == 32


def test_unknown_names_fail_with_one_line(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such model directory or file") as info:
        load_model(tmp_path / "missing")
    assert "\n" not in str(info.value) and "bundled models: demo" in str(info.value)


def test_load_checkpoint_is_a_deprecated_alias(tiny_model_dir: Path) -> None:
    """One public loader: `load_model`; the old top-level `load_checkpoint` still works for a release, warning."""
    import ofa_grounding

    assert "load_checkpoint" not in ofa_grounding.__all__
    with pytest.warns(DeprecationWarning, match="load_model"):
        old = ofa_grounding.load_checkpoint(tiny_model_dir)
    new = load_model(tiny_model_dir)
    assert old.layout == new.layout and old.model.state_dict().keys() == new.model.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(old.model.state_dict().values(), new.model.state_dict().values()))
