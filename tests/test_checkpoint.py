from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from ofa_grounding import CheckpointError, Grounder
from ofa_grounding.checkpoint import read_checkpoint, read_state_dict, save_checkpoint
from ofa_grounding.tokenizer import ASSETS_DIR


def _copy_without_weights(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        if f.suffix != ".bin" and f.suffix != ".safetensors":
            shutil.copy(f, dst / f.name)
    return dst


def test_modelscope_directory_loads_fp16_upcast(small_model_dir: Path) -> None:
    """The small fixture is stored like OFA's ModelScope checkpoints (float16, three tied names, no buckets)."""
    ckpt = read_checkpoint(small_model_dir)
    params = dict(ckpt.model.named_parameters())
    assert all(p.dtype == torch.float32 for p in params.values())
    stored = torch.load(small_model_dir / "pytorch_model.bin", weights_only=True)
    assert stored["encoder.layers.0.fc1.weight"].dtype == torch.float16
    assert torch.equal(params["encoder.layers.0.fc1.weight"], stored["encoder.layers.0.fc1.weight"].float())
    # tied: one tensor for encoder, decoder and output projection
    assert ckpt.model.encoder.embed_tokens.weight is ckpt.model.decoder.embed_tokens.weight
    # the reference's unique parameters (the fixture's cases.json, provenance) less the decoder's parts for image
    # tokens, which grounding never feeds it: image positions (42 x 42 + 1) x d, code_layernorm_embedding and
    # image_pos_ln (weight and bias each), one image bias table of 6892 buckets x 2 heads per layer
    assert ckpt.model.num_parameters() == 7_846_258 - 1765 * 64 - 2 * 64 * 2 - 1 * 6892 * 2
    assert ckpt.generation.beam_size == 5 and ckpt.generation.constraint_range == (58457, 59457)
    assert ckpt.preprocess.patch_image_size == 256 and ckpt.preprocess.mean == (0.5, 0.5, 0.5)


@pytest.mark.slow
def test_safetensors_round_trip_gives_identical_answers(small_model_dir: Path, small_reference_dir: Path,
                                                        tmp_path: Path) -> None:
    ckpt = read_checkpoint(small_model_dir)
    out = save_checkpoint(tmp_path / "ours", ckpt.model, small_model_dir, ckpt.preprocess, ckpt.generation)
    assert {p.name for p in out.iterdir()} == {"config.json", "configuration.json", "model.safetensors",
                                               "vocab.json", "merges.txt"}
    again = read_checkpoint(out)
    for (k, a), (_, b) in zip(ckpt.model.state_dict().items(), again.model.state_dict().items()):
        assert torch.equal(a, b), k
    assert again.generation == ckpt.generation and again.preprocess == ckpt.preprocess
    image = small_reference_dir / "images/scene_rgb_320x240.png"
    a = Grounder(ckpt.model, ckpt.tokenizer, ckpt.preprocess, ckpt.generation).predict(image, "a blue square")
    b = Grounder.from_pretrained(out / "model.safetensors").predict(image, "a blue square")
    assert a == b


def test_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no config.json"):
        read_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="no such model"):
        read_checkpoint(tmp_path / "missing")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="no weights file"):
        read_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    (tmp_path / "model.safetensors").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="unreadable JSON"):
        read_checkpoint(tmp_path)


def test_missing_tokenizer_file(small_model_dir: Path, tmp_path: Path) -> None:
    d = _copy_without_weights(small_model_dir, tmp_path / "m")
    (d / "pytorch_model.bin").symlink_to(small_model_dir / "pytorch_model.bin")
    (d / "merges.txt").unlink()
    with pytest.raises(CheckpointError, match="missing tokenizer file merges.txt"):
        read_checkpoint(d)


def _write_state(d: Path, state: dict) -> None:
    torch.save(state, d / "pytorch_model.bin")


@pytest.mark.slow
def test_missing_unexpected_and_misshaped_keys(small_model_dir: Path, tmp_path: Path) -> None:
    state = torch.load(small_model_dir / "pytorch_model.bin", weights_only=True)
    d = _copy_without_weights(small_model_dir, tmp_path / "m")

    broken = dict(state)
    del broken["encoder.layers.0.fc1.bias"]
    _write_state(d, broken)
    with pytest.raises(CheckpointError, match=r"missing: encoder\.layers\.0\.fc1\.bias"):
        read_checkpoint(d)

    broken = dict(state)
    broken["encoder.layers.9.fc1.bias"] = torch.zeros(3)
    _write_state(d, broken)
    with pytest.raises(CheckpointError, match=r"unexpected: encoder\.layers\.9\.fc1\.bias"):
        read_checkpoint(d)

    broken = dict(state)
    assert state["encoder.image_proj.weight"].shape == (64, 1024)
    broken["encoder.image_proj.weight"] = torch.zeros(64, 512)
    _write_state(d, broken)
    with pytest.raises(CheckpointError, match=r"wrong shape: encoder\.image_proj\.weight \(64, 512\)"):
        read_checkpoint(d)

    broken = dict(state)
    broken["decoder.output_projection.weight"] = broken["decoder.output_projection.weight"].clone() + 1
    _write_state(d, broken)
    with pytest.raises(CheckpointError, match="differ"):
        read_checkpoint(d)


def test_config_of_another_size_is_a_shape_error(small_model_dir: Path, tmp_path: Path) -> None:
    d = _copy_without_weights(small_model_dir, tmp_path / "m")
    (d / "pytorch_model.bin").symlink_to(small_model_dir / "pytorch_model.bin")
    config = json.loads((d / "config.json").read_text())
    config["encoder_ffn_dim"] = 2048
    (d / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="wrong shape: encoder.layers.0.fc1.bias"):
        read_checkpoint(d)


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickles_are_never_unrestricted(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "pytorch_model.bin"
    torch.save({"weight": Evil()}, path)
    with pytest.raises(CheckpointError, match="refused: the file holds Python objects besides tensors"):
        read_state_dict(path)
    assert "pwned" not in capsys.readouterr().out


def test_tiny_model_saved_and_loaded(tiny_model_dir: Path) -> None:
    ckpt = read_checkpoint(tiny_model_dir)
    assert ckpt.model.config.d_model == 32 and ckpt.model.config.resnet_type == "resnet18"
    assert (tiny_model_dir / "vocab.json").read_bytes() == (ASSETS_DIR / "vocab.json").read_bytes()


def test_float16_storage_halves_the_file_and_loads_as_float32(tiny_model_dir: Path, tmp_path: Path) -> None:
    ckpt = read_checkpoint(tiny_model_dir)
    out = save_checkpoint(tmp_path / "half", ckpt.model, tiny_model_dir, ckpt.preprocess, ckpt.generation,
                          dtype=torch.float16)
    full = (tiny_model_dir / "model.safetensors").stat().st_size
    assert (out / "model.safetensors").stat().st_size < 0.55 * full
    again = read_checkpoint(out).model
    for name, value in again.state_dict().items():
        original = ckpt.model.state_dict()[name]
        expected = original.half().to(original.dtype) if original.is_floating_point() else original
        assert value.dtype == original.dtype and torch.equal(value, expected), name


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_hf_layout_round_trip(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Hugging Face OFA's layout: no configuration.json, pytorch_model.bin with every OFA key; our settings
    ride along in config.json so that a round trip keeps the 128 px preprocessing."""
    ours = read_checkpoint(tiny_model_dir)
    out = save_checkpoint(tmp_path / "hf", ours.model, ours.tokenizer_dir, ours.preprocess, ours.generation,
                          layout="hf")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "merges.txt", "pytorch_model.bin", "vocab.json"]
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["OFAModel"] and config["model_type"] == "ofa"
    raw = torch.load(out / "pytorch_model.bin", weights_only=True)
    assert "decoder.output_projection.weight" in raw and "decoder.code_layernorm_embedding.weight" in raw
    back = read_checkpoint(out)
    assert back.layout == "hf" and back.preprocess == ours.preprocess and back.generation == ours.generation
    assert _same_weights(back.model, ours.model)


def test_hf_directory_as_transformers_saves_it(tiny_model_dir: Path, tmp_path: Path) -> None:
    """`model.`-prefixed keys, safetensors holding one of the three tied names, no settings: loads with
    OFA's RefCOCO defaults."""
    from safetensors.torch import save_file

    ours = read_checkpoint(tiny_model_dir)
    hf = tmp_path / "hf-plain"
    hf.mkdir()
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(tiny_model_dir / name, hf / name)
    config = {"architectures": ["OFAModel"], "model_type": "ofa", **ours.model.config.to_dict()}
    (hf / "config.json").write_text(json.dumps(config))
    state = {f"model.{k}": v.contiguous() for k, v in ours.model.state_dict().items()
             if k != "decoder.embed_tokens.weight"}
    save_file(state, str(hf / "model.safetensors"))
    back = read_checkpoint(hf)
    assert back.layout == "hf" and back.preprocess.patch_image_size == 512 and back.generation.beam_size == 5
    assert _same_weights(back.model, ours.model)


def test_describe_counts_every_parameter_once(small_model_dir: Path) -> None:
    from ofa_grounding.report import describe

    ckpt = read_checkpoint(small_model_dir)
    info = describe(ckpt)
    params = info["parameters"]
    assert params["total"] == sum(p.numel() for p in ckpt.model.parameters())
    assert params["total"] == sum(v for k, v in params.items() if k != "total")
    # the token table: 59,457 ids x d_model 64, counted once although three names share it
    assert params["token embeddings"] == 59457 * 64
    assert info["preset"] is None and info["layout"] == "modelscope" and info["stored_dtype"] == "float16"
    assert info["vocabulary"] == {"size": 59457, "bins": 1000, "first_bin": 58457}


def test_legacy_torch_save_loads_and_malicious_pickles_are_refused_in_one_line(tmp_path: Path) -> None:
    import os

    from ofa_grounding.checkpoint import CheckpointError, read_state_dict

    legacy = tmp_path / "legacy.bin"
    torch.save({"w": torch.arange(3.0)}, legacy, _use_new_zipfile_serialization=False)  # pre-1.6 format
    assert torch.equal(read_state_dict(legacy)["w"], torch.arange(3.0))

    class Payload:
        def __reduce__(self):
            return os.system, ("echo should-not-run",)

    for zipped in (True, False):
        evil = tmp_path / f"evil-{zipped}.bin"
        torch.save({"w": Payload()}, evil, _use_new_zipfile_serialization=zipped)
        with pytest.raises(CheckpointError) as info:
            read_state_dict(evil)
        message = str(info.value)
        assert "refused" in message and "system" in message and "\n" not in message
        assert "weights_only=False" not in message and "weights_only" not in message


def test_the_old_layout_name_ours_still_writes_safetensors(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The layout is named as `convert --to` names it ("safetensors"); "ours", its old name, is still accepted."""
    from ofa_grounding.checkpoint import LAYOUTS

    assert LAYOUTS == ("safetensors", "modelscope", "hf")
    ckpt = read_checkpoint(tiny_model_dir)
    assert ckpt.layout == "safetensors"
    for layout in ("safetensors", "ours"):
        out = save_checkpoint(tmp_path / layout, ckpt.model, ckpt.tokenizer_dir, ckpt.preprocess, ckpt.generation,
                              layout=layout)
        assert (out / "model.safetensors").is_file() and (out / "configuration.json").is_file()
        assert read_checkpoint(out).layout == "safetensors"
    with pytest.raises(ValueError, match="layout must be one of safetensors, modelscope, hf"):
        save_checkpoint(tmp_path / "x", ckpt.model, ckpt.tokenizer_dir, ckpt.preprocess, ckpt.generation,
                        layout="theirs")
