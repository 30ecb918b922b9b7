"""model_names: what a model name means, wherever a model is taken (no model is loaded here)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from ofa_grounding.errors import CheckpointError
from ofa_grounding.model_names import BUNDLED_DIR, bundled_models, parse_model_name


def test_bundled_models_are_the_package_folders_with_a_config() -> None:
    models = bundled_models()
    assert models["demo"] == BUNDLED_DIR / "demo"
    assert all(path.parent == BUNDLED_DIR and (path / "config.json").is_file() for path in models.values())
    assert parse_model_name(None) == parse_model_name("demo")
    assert parse_model_name("demo").kind == "bundled" and parse_model_name("demo").path == BUNDLED_DIR / "demo"


def test_presets_only_with_their_prefix_and_only_for_training(caplog: pytest.LogCaptureFixture) -> None:
    assert parse_model_name("preset:tiny", presets_allowed=True).kind == "preset"
    with pytest.raises(CheckpointError, match=r"preset:demo is an architecture with random weights.*write demo$"):
        parse_model_name("preset:demo")
    with pytest.raises(CheckpointError, match="preset:nope: no such preset .*preset:tiny"):
        parse_model_name("preset:nope", presets_allowed=True)
    with pytest.raises(CheckpointError, match="an architecture preset .* as preset:tiny"):
        parse_model_name("tiny")  # inference never gets random weights
    with caplog.at_level(logging.WARNING, logger="ofa_grounding.model_names"):
        source = parse_model_name("tiny", presets_allowed=True)  # the old bare name: one more release
    assert source.kind == "preset" and source.name == "tiny"
    assert "deprecated" in caplog.text and "preset:tiny" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ofa_grounding.model_names"):
        source = parse_model_name("demo", presets_allowed=True)  # collides with the bundled model, which wins
    assert source.kind == "bundled" and "write preset:demo" in caplog.text


def test_paths_and_hub_ids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "demo").mkdir()
    monkeypatch.chdir(tmp_path)
    assert parse_model_name("demo").kind == "path"  # a folder here wins over the bundled name
    assert parse_model_name("damo/ofa_visual-grounding_refcoco_distilled_en").kind == "hub"
    assert parse_model_name("hf:OFA-Sys/ofa-tiny").kind == "hub"


@pytest.mark.parametrize("presets_allowed", [False, True])
def test_unknown_names_list_the_valid_ones(presets_allowed: bool) -> None:
    with pytest.raises(CheckpointError) as info:
        parse_model_name("nonsense", presets_allowed=presets_allowed)
    message = str(info.value)
    assert "\n" not in message and message.startswith("nonsense: no such model directory or file")
    assert "bundled models: demo" in message and "hf:ORG/NAME" in message
    assert ("preset:tiny" in message) is presets_allowed
