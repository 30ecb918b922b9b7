"""`ofa-ground calibrate` on OFA's layout (the small random fixture checkpoint) and a tiny JSONL made here:
the report, --write (and what it refuses), the held-out half, exit codes."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from ofa_grounding.cli import main

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "small-reference"
TEXTS = ["the red circle", "the thing on the left"]


def _rows(images: list[Path], split: str | None) -> list[dict]:
    rows = []
    for image in images:
        rows += [{"image": str(image), "text": t, "box": [1, 1, 10, 8], "objects": [{"shape": "circle"}]}
                 for t in TEXTS]
        rows.append({"image": str(image), "text": "the purple star", "box": None})  # absent
    return [{**r, "split": split} for r in rows] if split else rows


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cal-data")
    images = sorted((FIXTURE / "images").glob("*.png"))
    for split, part in (("val", images[:5]), ("test", images[5:])):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows(part, None)))
    return folder


@pytest.fixture()
def model(tmp_path: Path) -> Path:
    out = tmp_path / "model"
    shutil.copytree(FIXTURE / "ofa-d64-random", out)
    (out / "grounding.json").write_text(json.dumps({"note": "kept"}))
    return out


def test_calibrate_reports_and_writes(model: Path, data: Path, capsys: pytest.CaptureFixture) -> None:
    from ofa_grounding import Grounder

    assert main(["calibrate", "--model", str(model), "--data", str(data), "--write", "--json", "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["fit"] == {"split": "val", "answers": 15, "not_found_answers": report["fit"]["not_found_answers"]}
    held = report["held_out"]
    assert held["split"] == "test" and held["answers"] == 9 and 0 <= held["accuracy"] <= 1
    assert 0 <= held["ece"] <= 1 and held["raw_ece"] >= 0 and len(report["reliability"]) == 10
    stored = json.loads((model / "grounding.json").read_text())
    assert stored["note"] == "kept" and stored["calibration"] == report["stored"]
    assert stored["calibration"]["fitted"]["split"] == "val" and stored["calibration"]["held_out"]["answers"] == 9
    # a random model: boxes all wrong, no "not found" answers, so both kinds are constants that say why
    assert {stored["calibration"][k]["kind"] for k in ("box", "not_found")} == {"constant"}
    assert report["written_to"] == str(model / "grounding.json")
    r = Grounder.from_pretrained(model).predict(FIXTURE / "images" / "scene_rgb_320x240.png", TEXTS[0])
    assert r.calibrated and r.confidence == stored["calibration"]["box"]["probability"]
    assert main(["calibrate", "--model", str(model), "--data", str(data), "--no-progress", "--limit", "6"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("fitted on val: 6 answers") and "held out: test: 6 answers" in out
    assert "ECE" in out and "AUROC" in out and "reliability (test, calibrated)" in out


def test_without_a_test_split_every_second_image_is_held_out(model: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    images = sorted((FIXTURE / "images").glob("*.png"))[:4]
    path = tmp_path / "one.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _rows(images, None)))
    assert main(["calibrate", "--model", str(model), "--data", str(path), "--json", "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["fit"]["split"] is None and report["fit"]["answers"] == 6
    assert report["held_out"]["split"] == "all rows (every second image)" and report["held_out"]["answers"] == 6


def test_bad_usage_is_one_line_and_exit_2(model: Path, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture) -> None:
    def fails(args: list[str], message: str, code: int = 2) -> None:
        assert main(["calibrate", "--no-progress", *args]) == code
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err

    fails(["--data", str(data), "--write"], "the bundled demo model is part of the installed package; copy it "
                                            "into a directory first (ofa-ground convert")
    fails(["--model", "damo/some-hub-id", "--data", str(data), "--write"], "is not a model directory")
    fails(["--model", str(model), "--data", str(data), "--split", "train"], "--split train: no such split "
                                                                          "(splits: val, test)")
    fails(["--model", str(model), "--data", str(data), "--test-split", "val"], "--test-split val is the split")
    fails(["--model", str(model), "--data", str(tmp_path / "none")], "no such file or folder")
    fails(["--model", str(model), "--data", str(data), "--limit", "0"], "--limit must be at least 1")
    (model / "grounding.json").write_text("{oops")
    fails(["--model", str(model), "--data", str(data), "--write"], "grounding.json: unreadable JSON")
    (model / "grounding.json").unlink()
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as without the plot extra
    fails(["--model", str(model), "--data", str(data), "--plot", str(tmp_path / "p.png")],
          "--plot needs the plot extra (matplotlib is missing): pip install 'ofa-grounding[plot]'")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "val.jsonl").write_text(json.dumps({"image": "missing.png", "text": "x", "box": None}) + "\n")
    (empty / "test.jsonl").write_text("")
    assert main(["calibrate", "--model", str(model), "--data", str(empty), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "skipped:" in err and "no usable rows to fit on (val)" in err


def test_check_measures_the_stored_calibration_without_fitting(model: Path, data: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    assert main(["calibrate", "--model", str(model), "--check", "--data", str(data), "--no-progress"]) == 2
    assert "has no calibration to check" in capsys.readouterr().err
    assert main(["calibrate", "--model", str(model), "--data", str(data), "--write", "--json", "--no-progress"]) == 0
    fitted = json.loads(capsys.readouterr().out)
    stored = (model / "grounding.json").read_text()
    assert main(["calibrate", "--model", str(model), "--check", "--data", str(data), "--json", "--no-progress"]) == 0
    checked = json.loads(capsys.readouterr().out)["checked"]
    # the test split through the reloaded calibration: what the fit reported on the same rows
    held = fitted["held_out"]
    assert checked["split"] == "test" and checked["answers"] == held["answers"] == 9
    assert checked["ece"] == pytest.approx(held["ece"]) and checked["accuracy"] == pytest.approx(held["accuracy"])
    assert (model / "grounding.json").read_text() == stored  # nothing written
    assert main(["calibrate", "--model", str(model), "--check", "--data", str(data), "--split", "val",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("checked on val: 15 answers") and "nothing fitted" in out and "reliability (val" in out
    assert main(["calibrate", "--model", str(model), "--check", "--write", "--data", str(data)]) == 2
    assert "--check fits nothing" in capsys.readouterr().err
