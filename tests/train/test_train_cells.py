"""Cell supervision (train/cells.py): labels from a hand-made scene, the heads' losses, the trainer's use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from training_runs import run_cli

from ofa_grounding.data import Sample
from ofa_grounding.synthetic import COLORS, write_synthetic
from ofa_grounding.train.cells import CellHeads, cell_labels, smooth_bin_embeddings

NONE_COLOR = len(COLORS)  # v1's colours, then "none"

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
    from ofa_grounding.model import OFAModel, init_weights
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
    base = ["--model", "preset:demo", "--data", str(data), "--out", str(out), "--max-steps", "4", "--batch-size", "4",
            "--lr", "1e-3", "--image-size", "64", "--attr-weight", "1", "--pointer-weight", "1", "--smooth-bins",
            "--save-every", "2"]
    done = run_cli([*base, "--stop-at-step", "2"])
    assert done.returncode == 0, done.stderr
    heads_at_2 = {k: v for k, v in load_file(str(out / "last" / "trainer_state.safetensors")).items()
                  if k.startswith("cells.")}
    assert "cells.pointer.weight" in heads_at_2 and "cells.attr.weight" in heads_at_2
    resumed = run_cli([*base, "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout.strip().splitlines()[-1])["steps"] == 4
    rows = (out / "log.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert len(rows) == 5 and {"attr", "pointer", "nll_x0"} <= set(header)
    last = dict(zip(header, rows[-1].split(",")))
    assert float(last["attr"]) > 0 and 0 <= float(last["pointer_acc"]) <= 1 and float(last["nll_x0"]) > 0
    # the saved model is plain OFA: no head weights in it
    from ofa_grounding.checkpoint import read_checkpoint

    assert not any(k.startswith("cells") for k in read_checkpoint(out / "last").model.state_dict())

    # a new stage from this run's weights starts its heads as this run left them (lr 0: nothing moves)
    heads_at_4 = {k: v for k, v in load_file(str(out / "last" / "trainer_state.safetensors")).items()
                  if k.startswith("cells.")}
    stage2 = tmp_path / "stage2"
    nxt = ["--model", str(out / "last"), "--data", str(data), "--out", str(stage2), "--max-steps", "1",
           "--batch-size", "4", "--lr", "0", "--image-size", "64", "--attr-weight", "1", "--pointer-weight", "1"]
    done = run_cli([*nxt, "--heads-from", str(out / "last")])
    assert done.returncode == 0, done.stderr
    carried = load_file(str(stage2 / "last" / "trainer_state.safetensors"))
    assert all(torch.equal(carried[k], v) for k, v in heads_at_4.items())
    fresh = run_cli([*nxt, "--overwrite"])
    assert fresh.returncode == 0, fresh.stderr
    assert not torch.equal(load_file(str(stage2 / "last" / "trainer_state.safetensors"))["cells.attr.weight"],
                           heads_at_4["cells.attr.weight"])
    for bad, says in ((["--heads-from", str(data)], "no trainer_state.safetensors"),
                      (["--heads-from", str(out / "last"), "--attr-weight", "0", "--pointer-weight", "0"],
                       "needs the heads it starts")):
        done = run_cli([*nxt, "--overwrite", *bad])
        assert done.returncode == 2 and says in done.stderr and "Traceback" not in done.stderr, done.stderr


@pytest.mark.slow
def test_cell_heads_refuse_data_without_objects(tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    (tmp_path / "train.jsonl").write_text(json.dumps({"image": "a.png", "text": "x", "box": [1, 1, 9, 9]}) + "\n")
    done = run_cli(["--model", "preset:demo", "--data", str(tmp_path), "--out", str(tmp_path / "run"),
                    "--max-steps", "1", "--attr-weight", "1"])
    assert done.returncode == 2 and "need every sample's objects" in done.stderr
    assert "Traceback" not in done.stderr


