"""zoom.py and the Grounder's second look at small answers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from ofa_grounding import Grounder
from ofa_grounding.checkpoint import read_zoom, write_grounding
from ofa_grounding.cli import main
from ofa_grounding.errors import CheckpointError
from ofa_grounding.zoom import Zoom

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "shapes.png"


def test_the_window_is_a_square_around_a_small_box_inside_the_image() -> None:
    zoom = Zoom()  # 0.15 of the image at most, 4 box sides, at least 64 px
    assert zoom.window((100, 100, 130, 125), (640, 480)) == (55, 52, 175, 172)  # 4 x 30 px around the centre
    assert zoom.window((0, 0, 10, 10), (640, 480)) == (0, 0, 64, 64)  # at least min_side, shifted inside
    assert zoom.window((600, 440, 630, 470), (640, 480)) == (520, 360, 640, 480)
    assert zoom.window((10, 10, 500, 40), (640, 480)) is None  # wider than 15 % of the image: not small
    assert zoom.window((10, 10, 10, 40), (640, 480)) is None  # no area
    assert Zoom(max_share=0.5).window((5, 5, 20, 20), (50, 40)) == (0, 0, 40, 40)  # never larger than the image


def test_settings_are_checked_and_round_trip_through_grounding_json(tmp_path: Path) -> None:
    for bad in ({"max_share": 0}, {"factor": 0.5}, {"min_side": 8}, {"min_iou": 2}):
        with pytest.raises(ValueError, match="zoom needs"):
            Zoom(**bad)
    with pytest.raises(ValueError, match="keys among"):
        Zoom.from_json({"max_share": 0.1, "size": 3})
    zoom = Zoom(max_share=0.2, factor=3.0, min_side=48, min_iou=0.4)
    write_grounding(tmp_path, None, None, zoom)
    assert read_zoom(tmp_path) == zoom and json.loads((tmp_path / "grounding.json").read_text())["zoom"]["factor"] == 3
    (tmp_path / "grounding.json").write_text(json.dumps({"zoom": {"factor": "big"}}))
    with pytest.raises(CheckpointError, match="grounding.json"):
        read_zoom(tmp_path)


def test_a_second_look_answers_from_the_crop() -> None:
    """With every answer small enough and any overlap accepted, each box answer is the crop's answer moved
    back into the image; without a zoom the answers are the first look's (the bundled demo-small: a random
    model's boxes have no area)."""
    texts = ["the red circle", "the blue square", "the green triangle", "the yellow star", "the purple star"]
    plain = Grounder.from_pretrained("demo-small", zoom=None, calibration=None)
    zoom = Zoom(max_share=1.0, factor=1.5, min_side=200, min_iou=0.0)  # some context around each shape
    zooming = Grounder.from_pretrained("demo-small", zoom=zoom, calibration=None)
    image = Image.open(EXAMPLE).convert("RGB")
    first, second = plain.predict(image, texts), zooming.predict(image, texts)
    looked = 0
    for a, b in zip(first, second):
        window = zoom.window(a.box, image.size) if a.found else None
        if window is None:
            assert b == a
            continue
        again = plain.predict(image.crop(window), a.text)
        assert b.zoomed == again.found
        if b.zoomed:
            looked += 1
            moved = (again.box[0] + window[0], again.box[1] + window[1], again.box[2] + window[0],
                     again.box[3] + window[1])
            assert b.box == pytest.approx(moved) and b.tokens == a.tokens and b.score == a.score
    assert looked >= 3 and not second[-1].found  # the purple star is not there: no second look


def test_the_model_folder_turns_it_on_and_no_zoom_off(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from ofa_grounding.model_names import bundled_models

    folder = tmp_path / "model"
    shutil.copytree(bundled_models()["demo-small"], folder)
    write_grounding(folder, None, None, Zoom(max_share=1.0, factor=1.0, min_side=200, min_iou=0.0))
    assert Grounder.from_pretrained(folder).zoom is not None
    assert main(["info", str(folder)]) == 0
    assert "a second look at answers up to 1 of the image (zoom)" in capsys.readouterr().out
    assert Grounder.from_pretrained(folder, zoom=None).zoom is None
    texts = ["the red circle", "the blue square", "the green triangle", "the yellow star"]
    zoomed = {}
    for more in ([], ["--no-zoom"]):
        assert main(["predict", "--model", str(folder), str(EXAMPLE), *texts, "--json", *more]) == 0
        zoomed[bool(more)] = [r["zoomed"] for r in json.loads(capsys.readouterr().out)["results"]]
    assert any(zoomed[False]) and not any(zoomed[True])
