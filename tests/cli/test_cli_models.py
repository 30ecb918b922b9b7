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
    from ofa_grounding.checkpoint import full_state_dict, load_checkpoint

    original = load_checkpoint(tiny_model_dir)
    pt = write_fairseq(tmp_path / "model.pt", full_state_dict(original.model), original.model.config,
                       original.preprocess, original.generation)
    chain = [(str(pt), "safetensors"), ("a", "modelscope"), ("b", "hf"), ("c", "safetensors")]
    src = str(pt)
    for name, (_, to) in zip("abcd", chain):
        assert main(["convert", src, str(tmp_path / name), "--to", to]) == 0, capsys.readouterr().err
        src = str(tmp_path / name)
    assert "(hf) ->" in capsys.readouterr().out
    layouts = {n: load_checkpoint(tmp_path / n).layout for n in "abcd"}
    assert layouts == {"a": "ours", "b": "modelscope", "c": "hf", "d": "ours"}
    final = load_checkpoint(tmp_path / "d")
    a, b = original.model.state_dict(), final.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert final.preprocess == original.preprocess and final.generation == original.generation
    example = Path(__file__).resolve().parents[2] / "examples" / "shapes.png"
    r1 = Grounder.from_pretrained(tiny_model_dir).predict(example, "the red circle")
    r2 = Grounder.from_pretrained(tmp_path / "d").predict(example, "the red circle")
    assert r1.tokens == r2.tokens and r1.box == r2.box

    assert main(["convert", str(tiny_model_dir), str(tmp_path / "d"), "--to", "hf"]) == 2  # not empty
    assert "--overwrite" in capsys.readouterr().err
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
    from ofa_grounding import DEFAULT_MODEL

    assert main(["info", str(DEFAULT_MODEL)]) == 0  # the bundled model: an architecture with a preset's name
    assert "ours layout, preset demo, stored as float16" in capsys.readouterr().out
