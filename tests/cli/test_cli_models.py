"""`ofa-ground convert` and `info`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ofa_grounding.cli import main


@pytest.mark.slow
def test_convert_round_trips_every_layout(tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """fairseq .pt -> safetensors -> modelscope -> hf -> safetensors: identical tensors, identical answers."""
    import torch

    from fairseq_writer import write_fairseq
    from ofa_grounding import Grounder
    from ofa_grounding.checkpoint import full_state_dict, read_checkpoint

    original = read_checkpoint(tiny_model_dir)
    pt = write_fairseq(tmp_path / "model.pt", full_state_dict(original.model), original.model.config,
                       original.preprocess, original.generation)
    chain = [(str(pt), "safetensors"), ("a", "modelscope"), ("b", "hf"), ("c", "safetensors")]
    src = str(pt)
    for name, (_, to) in zip("abcd", chain):
        assert main(["convert", src, str(tmp_path / name), "--to", to]) == 0, capsys.readouterr().err
        src = str(tmp_path / name)
    assert "(hf) ->" in capsys.readouterr().out
    layouts = {n: read_checkpoint(tmp_path / n).layout for n in "abcd"}
    assert layouts == {"a": "safetensors", "b": "modelscope", "c": "hf", "d": "safetensors"}
    final = read_checkpoint(tmp_path / "d")
    a, b = original.model.state_dict(), final.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert final.preprocess == original.preprocess and final.generation == original.generation
    example = Path(__file__).resolve().parents[2] / "examples" / "shapes.png"
    r1 = Grounder.from_pretrained(tiny_model_dir).predict(example, "the red circle")
    r2 = Grounder.from_pretrained(tmp_path / "d").predict(example, "the red circle")
    assert r1.tokens == r2.tokens and r1.box == r2.box

    assert main(["convert", str(tiny_model_dir), str(tmp_path / "d"), "--to", "hf"]) == 2  # not empty
    assert "--overwrite" in capsys.readouterr().err
    assert main(["convert", str(tiny_model_dir), str(example), "--to", "hf"]) == 2  # a file, not a folder
    assert capsys.readouterr().err == f"ofa-ground: error: {example} exists and is not a directory\n"
    assert main(["convert", str(tiny_model_dir), str(tmp_path / "half"), "--to", "safetensors", "--dtype", "fp16"]) == 0
    assert main(["info", str(tmp_path / "half"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert info["stored_dtype"] == "float16" and info["architecture"]["d_model"] == 32
    assert main(["convert", str(tmp_path / "missing"), str(tmp_path / "e"), "--to", "hf"]) == 2


def test_info_prints_a_summary(small_model_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["info", str(small_model_dir)]) == 0
    out = capsys.readouterr().out
    assert "modelscope layout, preset (none: custom architecture), stored as float16" in out
    assert "resnet18 backbone, d_model 64, 1+1 layers, 2 heads, ffn 256" in out
    assert "token embeddings" in out and "59,457 ids (1000 location bins from id 58457)" in out
    assert "beam 5" in out and "256 px" in out
    assert "answers: confidence raw, no 'not found' threshold, no second look" in out  # OFA's: as the reference
    from ofa_grounding import DEFAULT_MODEL

    assert main(["info", str(DEFAULT_MODEL)]) == 0  # the bundled model: an architecture with a preset's name
    assert "safetensors layout, preset demo, stored as float16" in capsys.readouterr().out


def test_models_by_name_in_every_command_that_takes_one(small_reference_dir: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    """A bundled model by its plain name (`info demo`, `predict --model demo`); preset:NAME (random weights) and
    unknown names refused with one line that lists the valid names."""
    assert main(["info", "demo", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["preset"] == "demo" and info["layout"] == "safetensors"
    image = str(small_reference_dir / "images/scene_tiny_23x17.png")
    assert main(["predict", "--model", "demo", image, "the red circle", "--json", "--threads", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["width"] == 23
    refusals = {("info", "preset:demo"): "random weights, which only train and distill start from",
                ("convert", "nonsense", "out", "--to", "hf"): "bundled models: demo, demo-small; hub ids",
                ("predict", "--model", "nonsense", image, "x"): "--model: nonsense: no such model",
                ("predict", "--model", "preset:demo", image, "x"): "for the trained demo model write demo",
                ("calibrate", "--model", "demo", "--data", image, "--write"): "the bundled demo model is part of"}
    for argv, message in refusals.items():
        assert main(list(argv)) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, (argv, err)


@pytest.mark.slow
def test_train_starts_from_a_bundled_model_or_a_preset(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`train --model demo`: the bundled weights (with a warning naming preset:demo); `--model preset:demo`: random
    weights of that architecture. One update at a negligible learning rate keeps the initial weights."""
    import torch
    from safetensors.torch import load_file

    from ofa_grounding import DEFAULT_MODEL
    from ofa_grounding.synthetic import write_synthetic

    write_synthetic(tmp_path / "syn", 8, seed=4, size=(96, 96))
    shipped = load_file(DEFAULT_MODEL / "model.safetensors")
    key = "encoder.layers.0.fc1.weight"
    for model, bundled in (("demo", True), ("preset:demo", False)):
        out = tmp_path / model.replace(":", "-")
        argv = ["train", "--model", model, "--data", str(tmp_path / "syn"), "--out", str(out), "--max-steps", "1",
                "--batch-size", "2", "--lr", "1e-12", "--warmup-ratio", "0", "--threads", "1", "--no-progress"]
        assert main(argv) == 0, capsys.readouterr().err
        err = capsys.readouterr().err
        assert ("write preset:demo" in err) is bundled, err
        trained = load_file(out / "last" / "model.safetensors")[key].float()
        assert torch.allclose(trained, shipped[key].float(), atol=1e-3) is bundled
    assert main(["train", "--model", "preset:nope", "--data", str(tmp_path / "syn"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no such preset" in err and "preset:tiny" in err


@pytest.mark.slow
def test_convert_carries_the_calibration_and_threshold(tiny_model_dir: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    """A converted model gives the same calibrated confidence as its source and keeps its model card; a model
    without grounding.json or a card converted over an earlier copy does not inherit that copy's files."""
    from ofa_grounding import DEFAULT_MODEL, Grounder
    from ofa_grounding.checkpoint import GROUNDING_FILE, read_grounding

    out = tmp_path / "demo-hf"
    assert main(["convert", "demo", str(out), "--to", "hf"]) == 0
    assert GROUNDING_FILE in capsys.readouterr().out
    source = read_grounding(DEFAULT_MODEL)
    assert "calibration" in source  # what the bundled model carries
    assert read_grounding(out) == {k: source[k] for k in ("min_confidence", "zoom", "calibration") if k in source}
    assert "zoom" in source  # the bundled model takes a second look, and so does its copy
    example = Path(__file__).resolve().parents[2] / "examples" / "shapes.png"
    a = Grounder.from_pretrained("demo").predict(example, "the red circle")
    b = Grounder.from_pretrained(out).predict(example, "the red circle")
    assert b.calibrated and b.box == a.box and b.confidence == pytest.approx(a.confidence, abs=1e-9)
    assert (out / "README.md").read_text(encoding="utf-8") == (DEFAULT_MODEL / "README.md").read_text(encoding="utf-8")
    assert Grounder.from_pretrained(out).card.startswith("#")  # the card goes with the weights (info, web page)
    assert main(["convert", str(tiny_model_dir), str(out), "--to", "hf", "--overwrite"]) == 0
    assert not (out / GROUNDING_FILE).exists() and not (out / "README.md").exists()
