"""OFA's fairseq `.pt` checkpoints: the name table, the restricted unpickler, loading and configuration."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest
import torch

from fairseq_writer import write_fairseq
from ofa_grounding import Grounder
from ofa_grounding.checkpoint import CheckpointError, full_state_dict, read_checkpoint
from ofa_grounding.fairseq import from_fairseq_key, read_fairseq, to_fairseq_key

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "shapes.png"

# From the design notes (section c.2: OFA-Compress's converter and the names in OFA-Sys/OFA#346).
KNOWN = [
    ("encoder.layers.0.attn_ln.weight", "encoder.layers.0.self_attn_mid_layer_norm.weight"),
    ("encoder.layers.3.ffn_layernorm.bias", "encoder.layers.3.ffn_layer_norm.bias"),
    ("decoder.layers.1.self_attn_ln.weight", "decoder.layers.1.self_attn_mid_layer_norm.weight"),
    ("decoder.layers.0.cross_attn_ln.bias", "decoder.layers.0.cross_attn_mid_layer_norm.bias"),
    ("decoder.layers.2.ffn_layernorm.weight", "decoder.layers.2.ffn_layer_norm.weight"),
    ("decoder.layers.0.encoder_attn.k_proj.weight", "decoder.layers.0.cross_attn.k_proj.weight"),
    ("decoder.layers.0.encoder_attn.c_attn", "decoder.layers.0.cross_attn.c_attn"),
    ("decoder.layers.5.encoder_attn_layer_norm.weight", "decoder.layers.5.cross_attn_layer_norm.weight"),
    ("encoder.layers.0.self_attn.c_attn", "encoder.layers.0.self_attn.c_attn"),
    ("encoder.embed_images.layer1.0.downsample.0.weight", "encoder.embed_images.layer1.0.downsample.0.weight"),
    ("decoder.output_projection.weight", "decoder.output_projection.weight"),
]


@pytest.mark.parametrize("fairseq_name, our_name", KNOWN)
def test_name_table_both_directions(fairseq_name: str, our_name: str) -> None:
    assert from_fairseq_key(fairseq_name) == our_name
    assert to_fairseq_key(our_name) == fairseq_name


def test_every_key_round_trips(tiny_model_dir: Path) -> None:
    state = full_state_dict(read_checkpoint(tiny_model_dir).model)
    fairseq_names = [to_fairseq_key(k) for k in state]
    assert [from_fairseq_key(k) for k in fairseq_names] == list(state)
    assert not any(s in k for k in fairseq_names for s in ("mid_layer_norm", ".cross_attn.", "cross_attn_layer_norm"))
    assert any(".attn_ln." in k for k in fairseq_names) and any(".encoder_attn." in k for k in fairseq_names)


@pytest.fixture(scope="module")
def fairseq_file(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    ckpt = read_checkpoint(tiny_model_dir)
    path = tmp_path_factory.mktemp("fairseq") / "refcoco_tiny_best.pt"
    return write_fairseq(path, full_state_dict(ckpt.model), ckpt.model.config, ckpt.preprocess, ckpt.generation)


def test_fairseq_file_loads_with_the_same_weights_and_answers(fairseq_file: Path, tiny_model_dir: Path) -> None:
    raw = torch.load(fairseq_file, weights_only=False)  # our own test file: trusted
    assert "encoder.version" in raw["model"] and "decoder.layers.0.encoder_attn.q_proj.weight" in raw["model"]
    assert raw["cfg"]["model"]["encoder_embed_dim"] == 32 and raw["cfg"]["task"]["patch_image_size"] == 128

    ours, theirs = read_checkpoint(tiny_model_dir), read_checkpoint(fairseq_file)
    assert theirs.layout == "fairseq" and theirs.model.config == ours.model.config
    assert theirs.preprocess.patch_image_size == 128 and theirs.generation.constraint_range == (58457, 59457)
    a, b = ours.model.state_dict(), theirs.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    g1, g2 = Grounder.from_pretrained(tiny_model_dir), Grounder.from_pretrained(fairseq_file)
    r1, r2 = g1.predict(EXAMPLE, "the red circle"), g2.predict(EXAMPLE, "the red circle")
    assert r1.tokens == r2.tokens and r1.box == r2.box


def test_old_checkpoints_with_an_argparse_namespace(fairseq_file: Path, tmp_path: Path) -> None:
    raw = torch.load(fairseq_file, weights_only=False)
    flat = {**raw["cfg"]["model"], **raw["cfg"]["task"]}
    raw["args"], raw["cfg"] = argparse.Namespace(**flat), None
    torch.save(raw, tmp_path / "old.pt")
    state, model_args, task_args = read_fairseq(tmp_path / "old.pt")
    assert model_args["encoder_layers"] == 2 and task_args["patch_image_size"] == 128
    assert "decoder.layers.0.cross_attn.k_proj.weight" in state and "encoder.version" not in state
    assert read_checkpoint(tmp_path / "old.pt").model.config.d_model == 32


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/ofa-grounding-exploit-ran",))


def test_the_unpickler_refuses_anything_else(fairseq_file: Path, tmp_path: Path) -> None:
    marker = Path("/tmp/ofa-grounding-exploit-ran")
    marker.unlink(missing_ok=True)
    raw = torch.load(fairseq_file, weights_only=False)
    raw["extra_state"]["payload"] = _Exploit()
    torch.save(raw, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"refused to unpickle: it names (posix|os)\.system"):
        read_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


def test_not_a_fairseq_checkpoint(tmp_path: Path, tiny_model_dir: Path) -> None:
    torch.save({"encoder.embed_tokens.weight": torch.zeros(3, 2)}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="not a fairseq checkpoint"):
        read_checkpoint(tmp_path / "plain.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match="cannot read as a fairseq checkpoint"):
        read_checkpoint(tmp_path / "junk.pt")
    raw = {"model": {"encoder.embed_tokens.weight": torch.zeros(3, 2)}, "cfg": None, "args": None}
    torch.save(raw, tmp_path / "nocfg.pt")
    with pytest.raises(CheckpointError, match="without its configuration"):
        read_checkpoint(tmp_path / "nocfg.pt")


def test_wrong_vocabulary_is_named(fairseq_file: Path, tmp_path: Path) -> None:
    raw = torch.load(fairseq_file, weights_only=False)
    for k in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "decoder.output_projection.weight"):
        raw["model"][k] = raw["model"][k][:21128]  # the size of the Chinese BERT vocabulary
    torch.save(raw, tmp_path / "zh.pt")
    with pytest.raises(CheckpointError, match="21128 token embeddings"):
        read_checkpoint(tmp_path / "zh.pt")
