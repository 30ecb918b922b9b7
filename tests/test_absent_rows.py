"""Rows describing an absent object (`"box": null`) through evaluation: scored right when answered "not found",
reported on their own line; a present object answered "not found" is a miss."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from ofa_grounding.data import read_jsonl
from ofa_grounding.evaluate import PREDICTION_KEYS, evaluate
from ofa_grounding.image import load_image
from ofa_grounding.metrics import summarize
from ofa_grounding.predictor import GroundingResult

NULL = (0.0, 0.0, 0.5, 0.5)


class StandIn:
    """Answers "not found" (the null box, found false) for texts with "nothing", the ground truth otherwise."""

    batch_size = 8

    def __init__(self, truth: dict[str, list[float] | None]) -> None:
        self.truth = truth

    def load_image(self, image):
        return load_image(image)

    def predict_batch(self, items):
        return [[self._answer(t, image.size) for t in texts] for image, texts in items]

    def _answer(self, text, size):
        box = self.truth[text]
        if "nothing" in text or box is None:
            return GroundingResult(text, NULL, -1.0, 0.05, (0, 0, 0, 0), size, found=False)
        return GroundingResult(text, tuple(box), -1.0, 0.03, (0, 0, 0, 0), size)


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    Image.new("RGB", (100, 80)).save(tmp_path / "a.png")
    rows = [{"image": "a.png", "text": "the circle", "box": [10, 10, 50, 50], "kind": "attribute"},
            {"image": "a.png", "text": "nothing here but present", "box": [60, 10, 90, 70], "kind": "attribute"},
            {"image": "a.png", "text": "nothing: the purple star", "box": None, "kind": "absent"},
            {"image": "a.png", "text": "a star answered with a box", "box": None, "kind": "absent"}]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path / "d.jsonl"


def test_absent_rows_are_scored_apart(data: Path) -> None:
    truth = {"the circle": [10, 10, 50, 50], "nothing here but present": [60, 10, 90, 70],
             "nothing: the purple star": None, "a star answered with a box": [20, 20, 40, 40]}
    report = evaluate(StandIn(truth), read_jsonl(data), "test", progress=False)
    assert [r["hit"] for r in report.records] == [True, False, True, False]
    summary = report.summary
    assert summary["count"] == 2 and summary["acc50"] == 0.5 and summary["miou"] == pytest.approx(0.5, abs=1e-6)
    assert summary["absent"] == {"count": 2, "not_found": 0.5}
    assert "absent" not in report.breakdowns()["expression kind"]  # reported on their own line instead
    assert report.breakdowns()["box size"]["medium"]["count"] == 2
    rows = list(report.predictions())
    assert all(list(p) == list(PREDICTION_KEYS) for p in rows)
    assert rows[2]["gt_box"] is None and rows[2]["iou"] is None and rows[2]["found"] is False


def test_summaries_without_absent_rows_keep_their_keys() -> None:
    records = [{"box": [0, 0, 10, 10], "gt_box": [0, 0, 10, 10]}]
    assert summarize(records) == {"count": 1, "acc50": 1.0, "acc75": 1.0, "miou": pytest.approx(1.0)}
    assert summarize([{**records[0], "found": False}])["acc50"] == 0.0


def test_cli_eval_reports_the_absent_line(tiny_model_dir: Path, data: Path, capsys: pytest.CaptureFixture) -> None:
    from ofa_grounding.cli import main

    assert main(["eval", "--model", str(tiny_model_dir), "--data", str(data), "--no-progress"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[1].split()[:2] == ["None", "2"]  # present rows only
    header = lines.index(next(line for line in lines if line.startswith("absent")))
    assert lines[header].split()[:3] == ["absent", "count", "not"] and lines[header + 1].split()[1] == "2"
    assert "4 samples in" in out
    assert main(["eval", "--model", str(tiny_model_dir), "--data", str(data), "--no-progress", "--json"]) == 0
    split = json.loads(capsys.readouterr().out)["splits"]["None"]
    assert split["count"] == 2 and split["absent"]["count"] == 2 and 0 <= split["absent"]["not_found"] <= 1
    only_absent = data.with_name("absent.jsonl")
    only_absent.write_text(json.dumps({"image": "a.png", "text": "x", "box": None}) + "\n")
    assert main(["eval", "--model", str(tiny_model_dir), "--data", str(only_absent), "--no-progress"]) == 0
