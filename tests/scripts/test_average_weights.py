"""scripts/average_weights.py: the mean of model directories, tensor by tensor, and clear refusals."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ofa_grounding.model_names import bundled_models


@pytest.fixture(scope="module")
def average_weights(load_script):
    return load_script("average_weights")


def _shifted_copy(src: Path, out: Path, shift: float) -> dict[str, torch.Tensor]:
    shutil.copytree(src, out)
    state = {k: (v.float() + shift).to(v.dtype) if v.is_floating_point() else v
             for k, v in load_file(str(src / "model.safetensors")).items()}
    save_file(state, str(out / "model.safetensors"))
    return state


def test_mean_of_two_models(average_weights, tmp_path: Path) -> None:
    demo = bundled_models()["demo"]
    a = _shifted_copy(demo, tmp_path / "a", 0.0)
    b = _shifted_copy(demo, tmp_path / "b", 0.5)
    assert average_weights.main([str(tmp_path / "mean"), str(tmp_path / "a"), str(tmp_path / "b"),
                                 "--weights", "3", "1"]) == 0
    mean = load_file(str(tmp_path / "mean" / "model.safetensors"))
    key = next(k for k, v in a.items() if v.is_floating_point() and v.numel() > 10)
    expected = 0.75 * a[key].float() + 0.25 * b[key].float()
    assert mean[key].dtype == a[key].dtype
    assert torch.allclose(mean[key].float(), expected, atol=2e-3)
    assert not torch.equal(mean[key], a[key])
    assert (tmp_path / "mean" / "config.json").read_text() == (demo / "config.json").read_text()


def test_refuses_an_existing_out_and_other_architectures(average_weights, tmp_path: Path) -> None:
    models = bundled_models()
    (tmp_path / "out").mkdir()
    with pytest.raises(SystemExit) as e:
        average_weights.main([str(tmp_path / "out"), str(models["demo"]), str(models["demo"])])
    assert e.value.code == 2
    assert average_weights.main([str(tmp_path / "mix"), str(models["demo"]), str(models["demo-small"])]) == 2
    assert not (tmp_path / "mix").exists()
