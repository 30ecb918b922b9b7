"""Cell supervision (train/cells.py): labels from a hand-made scene, the heads' losses, the trainer's use."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ofa_grounding.data import Sample
from ofa_grounding.synthetic import write_synthetic
from ofa_grounding.train.cells import NONE_COLOR, CellHeads, cell_labels, smooth_bin_embeddings

RED, BLUE = 0, 2  # index in synthetic.COLORS: red, green, blue, ...


def _scene() -> Sample:
    # 64 x 64 image, 4 x 4 grid of 16 px cells (centres at 8, 24, 40, 56). A large red circle over cells
    # (0..1, 0..1); a small blue star at 42..52, which covers no cell centre: its own centre (47, 47) is in (2, 2).
    objects = [{"shape": "circle", "color": "red", "size": "large", "texture": "solid", "box": [0, 0, 32, 32]},
               {"shape": "star", "color": "blue", "size": "small", "texture": "solid", "box": [42, 42, 52, 52]}]
    return Sample("s", Path("x.png"), "the star", (42.0, 42.0, 52.0, 52.0),
                  meta={"objects": objects, "image_size": [64, 64]})


def test_cell_labels_by_hand() -> None:
    labels = cell_labels([_scene()], [False], grid=4)
    color = labels["color"][0].view(4, 4)
    assert color[:2, :2].eq(RED).all()  # the circle covers these 4 cell centres
    assert color[2, 2] == BLUE  # the star covers no cell centre: its own centre cell is labelled
    assert (color == NONE_COLOR).sum() == 16 - 5
    assert labels["size"][0].view(4, 4)[0, 0] == 1 and labels["size"][0].view(4, 4)[2, 2] == 0
    # the target star (42..52)^2 overlaps cell 2 (32..48) by 6 px and cell 3 by 4 px on each axis
    pointer = labels["pointer"][0].view(4, 4)
    assert pointer[2:, 2:].flatten().tolist() == pytest.approx([0.36, 0.24, 0.24, 0.16])
    assert pointer.sum() == pytest.approx(1.0)


def test_cell_labels_follow_the_flip() -> None:
    sample = _scene()
    flipped = cell_labels([sample], [True], grid=4)
    color = flipped["color"][0].view(4, 4)
    assert color[:2, 2:].eq(RED).all() and color[:2, :2].eq(NONE_COLOR).all()
    # the mirrored star at 12..22 overlaps column 0 by 4 px and column 1 by 6 px; its centre cell is (2, 1)
    assert color[2, 1] == BLUE
    assert flipped["pointer"][0].view(4, 4)[2:, :2].flatten().tolist() == pytest.approx([0.24, 0.36, 0.16, 0.24])


def test_pointer_shares_area_between_cells() -> None:
    sample = _scene()
    sample.box = (8.0, 0.0, 24.0, 16.0)  # half in cell (0, 0), half in (0, 1)
    pointer = cell_labels([sample], [False], grid=4)["pointer"][0].view(4, 4)
    assert pointer[0, 0] == pytest.approx(0.5) and pointer[0, 1] == pytest.approx(0.5)


def test_heads_learn_a_fixed_mapping() -> None:
    torch.manual_seed(0)
    labels = cell_labels([_scene()], [False], grid=4)
    tokens = torch.randn(1, 16, 32)
    heads = CellHeads(32)
    first = heads.losses(tokens, tokens, labels)
    opt = torch.optim.Adam(heads.parameters(), lr=1e-2)
    for _ in range(200):
        terms = heads.losses(tokens, tokens, labels)
        (terms["attr"] + terms["pointer"]).backward()
        opt.step()
        opt.zero_grad()
    target = labels["pointer"][labels["pointer"] > 0]
    entropy = -(target * target.log()).sum()  # the least cross-entropy a soft target allows
    assert terms["attr"] < 0.1 * first["attr"] and terms["pointer"] < entropy + 0.05 < first["pointer"]
    assert terms["color_acc"] == 1.0 and terms["pointer_acc"] == 1.0


def test_smooth_bins_are_smooth() -> None:
    from ofa_grounding.checkpoint import init_weights
    from ofa_grounding.model import OFAModel
    from ofa_grounding.presets import get_preset

    model = init_weights(OFAModel(get_preset("demo").model))
    smooth_bin_embeddings(model, 58457, 1000)
    bins = model.encoder.embed_tokens.weight[58457:59457]
    near = torch.cosine_similarity(bins[:-1], bins[1:]).mean()
    far = torch.cosine_similarity(bins[:500], bins[500:]).mean()
    assert near > 0.99 and far < 0.5 and bins.std().item() == pytest.approx(0.02, rel=0.05)


@pytest.mark.slow
def test_train_with_cell_heads_saves_and_resumes_them(tmp_path: Path) -> None:
    data = tmp_path / "syn"
    write_synthetic(data, 24, seed=5, size=(64, 64))
    out = tmp_path / "run"
    base = [sys.executable, "-m", "ofa_grounding.cli", "train", "--model", "demo", "--data", str(data), "--out",
            str(out), "--max-steps", "4", "--batch-size", "4", "--lr", "1e-3", "--image-size", "64",
            "--attr-weight", "1", "--pointer-weight", "1", "--smooth-bins", "--save-every", "2", "--no-progress"]
    done = subprocess.run([*base, "--stop-at-step", "2"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    heads_at_2 = {k: v for k, v in load_file(str(out / "last" / "trainer_state.safetensors")).items()
                  if k.startswith("cells.")}
    assert "cells.pointer.weight" in heads_at_2 and "cells.attr.weight" in heads_at_2
    resumed = subprocess.run([*base, "--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout.strip().splitlines()[-1])["steps"] == 4
    rows = (out / "log.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert len(rows) == 5 and {"attr", "pointer", "nll_x0"} <= set(header)
    last = dict(zip(header, rows[-1].split(",")))
    assert float(last["attr"]) > 0 and 0 <= float(last["pointer_acc"]) <= 1 and float(last["nll_x0"]) > 0
    # the saved model is plain OFA: no head weights in it
    from ofa_grounding.checkpoint import load_checkpoint

    assert not any(k.startswith("cells") for k in load_checkpoint(out / "last").model.state_dict())


@pytest.mark.slow
def test_cell_heads_refuse_data_without_objects(tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    (tmp_path / "train.jsonl").write_text(json.dumps({"image": "a.png", "text": "x", "box": [1, 1, 9, 9]}) + "\n")
    done = subprocess.run([sys.executable, "-m", "ofa_grounding.cli", "train", "--model", "demo", "--data",
                           str(tmp_path), "--out", str(tmp_path / "run"), "--max-steps", "1", "--attr-weight", "1",
                           "--no-progress"], capture_output=True, text=True)
    assert done.returncode == 2 and "need every sample's objects" in done.stderr
    assert "Traceback" not in done.stderr


def test_absent_descriptions_target_the_null_box(tmp_path: Path) -> None:
    from ofa_grounding.config import GenerationConfig, PreprocessConfig
    from ofa_grounding.data import open_dataset
    from ofa_grounding.image import NULL_BOX_BINS, is_null_box
    from ofa_grounding.synthetic import SceneObject, resolve
    from ofa_grounding.tokenizer import OFATokenizer
    from ofa_grounding.train.data import GroundingTrainSet, collate

    write_synthetic(tmp_path, 40, seed=2, size=(64, 64))
    samples = list(open_dataset(tmp_path, split="train"))
    tok = OFATokenizer.default()
    ds = GroundingTrainSet(samples, tok, PreprocessConfig(patch_image_size=64, max_image_size=64), GenerationConfig(),
                           seed=0, absent_rate=0.5)
    items = [ds[i] for i in range(len(ds))]
    absent = [it for it in items if it.absent]
    assert 0.2 * len(items) < len(absent) < 0.8 * len(items)
    for it in absent:
        assert it.target.tolist() == [b + tok.bin_offset for b in NULL_BOX_BINS] + [tok.eos_id]
        text = tok.decode(it.input_ids).split('"')[1].strip()  # the prompt around "the <colour> <shape>"
        objects = [SceneObject(**{**o, "box": tuple(o["box"])}) for o in samples[it.index].meta["objects"]]
        _, color, shape = text.split()
        assert color in {o.color for o in objects} | {"red", "green", "blue", "yellow", "purple", "orange"}
        assert resolve({"kind": "attribute", "desc": {"color": color, "shape": shape}}, objects) == [], text
    for it in items:
        if not it.absent:
            assert not is_null_box([t - tok.bin_offset for t in it.target[:4].tolist()])
    assert is_null_box([0, 3, 24, 10]) and not is_null_box([0, 0, 25, 10])
    batch = collate(items[:8], tok.pad_id, tok.bos_id)
    labels = cell_labels([samples[i] for i in batch["index"].tolist()], batch["flipped"].tolist(), 4,
                         batch["absent"].tolist())
    for row, was_absent in zip(labels["pointer"], batch["absent"].tolist()):
        assert row.sum().item() == pytest.approx(0.0 if was_absent else 1.0)
    # the same draw for the same (seed, epoch, index): a resumed run sees the same negatives
    again = [ds[i] for i in range(len(ds))]
    assert [it.absent for it in again] == [it.absent for it in items]
    assert [it.input_ids for it in again] == [it.input_ids for it in items]

