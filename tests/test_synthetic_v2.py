"""The wide synthetic world (make-synthetic --world v2): files, geometry, language."""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ofa_grounding import synthetic_v2 as v2
from ofa_grounding.metrics import box_iou
from ofa_grounding.synthetic import SceneObject, resolve, write_synthetic


def _rows(folder: Path) -> list[dict]:
    return [json.loads(line) for split in ("train", "val", "test") for line in (folder / f"{split}.jsonl").open()]


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("v2")
    write_synthetic(out, 400, seed=5, world="v2", simple=2, absent=1.0)
    return out


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    write_synthetic(tmp_path / "a", 40, seed=9, world="v2")
    write_synthetic(tmp_path / "b", 40, seed=9, world="v2")
    write_synthetic(tmp_path / "c", 40, seed=10, world="v2")
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b") != _digest(tmp_path / "c")


@pytest.mark.slow
def test_worker_processes_write_the_same_bytes(tmp_path: Path) -> None:
    write_synthetic(tmp_path / "one", 120, seed=9, world="v2")
    write_synthetic(tmp_path / "two", 120, seed=9, world="v2", workers=2)
    assert _digest(tmp_path / "one") == _digest(tmp_path / "two")


def test_canvases_span_sizes_and_aspect_ratios(world: Path) -> None:
    sizes = {tuple(r["image_size"]) for r in _rows(world)}
    for w, h in sizes:
        assert 160 <= w <= 1600 and 160 <= h <= 1600
        assert 1 / 3.02 <= w / h <= 3.02
    ratios = [w / h for w, h in sizes]
    assert min(ratios) < 0.5 and max(ratios) > 2  # tall and wide canvases both occur
    assert max(max(s) for s in sizes) > 1000 and min(min(s) for s in sizes) < 250
    for row in _rows(world)[:50]:  # the file is the size the row says
        assert Image.open(world / row["image"]).size == tuple(row["image_size"])
    formats = {Path(r["image"]).suffix for r in _rows(world)}
    assert formats == {".jpg", ".png"}


def test_every_present_description_picks_out_its_object(world: Path) -> None:
    rows = _rows(world)
    for row in rows:
        if row["kind"] == "absent":
            assert row["box"] is None and row["target"] is None
            continue
        objects = [SceneObject(o["shape"], o["color"], o["size"], o["fill"], tuple(o["box"])) for o in row["objects"]]
        gap = 0.03 * min(row["image_size"])
        assert resolve(row["expression"], objects, gap) == [row["target"]], row["text"]
        assert row["box"] == row["objects"][row["target"]]["box"]
        w, h = row["image_size"]
        x0, y0, x1, y1 = row["box"]
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h


def test_absent_descriptions_name_nothing_in_the_scene(world: Path) -> None:
    colour_words = {w: c for c, ws in v2.COLOR_WORDS.items() for w in ws}
    shape_words = {w: s for s, ws in v2.SHAPE_WORDS.items() for w in ws}
    absent = [r for r in _rows(world) if r["kind"] == "absent"]
    assert len(absent) > 100
    unknown = 0
    for row in absent:
        words = row["expression"]["words"]
        *colour, noun = words.rsplit(" ", 1) if " " in words and words not in shape_words else ("", words)
        shape = shape_words.get(noun) or shape_words.get(words.split(" ", 1)[-1])
        colour = colour_words.get(words.split(" ")[0])
        if shape is None or (colour is None and " " in words):
            unknown += 1  # a word no scene shows: "heart", "gold"
            continue
        assert not any(o["shape"] == shape and o["color"] == colour for o in row["objects"]), row["text"]
    assert unknown > 10


@pytest.mark.parametrize("shape", v2.SHAPES)
@pytest.mark.parametrize("fill", ["solid", "outline", "striped"])
def test_the_recorded_box_is_where_the_pixels_are(shape: str, fill: str) -> None:
    rng = random.Random(f"{shape}/{fill}")
    for angle in (0.0, 0.35, math.pi / 4, 2.0):
        image = Image.new("RGB", (300, 200), (230, 230, 230))
        points = v2._placed(shape, 2.0 if shape in ("ellipse", "rectangle", "diamond") else 1.0, 80, angle, 150, 100)
        v2._draw(image, points, (200, 30, 30), fill, 80, rng)
        ys, xs = np.nonzero(np.abs(np.asarray(image, np.int32) - 230).sum(-1) > 60)
        drawn = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        recorded = (min(p[0] for p in points), min(p[1] for p in points), max(p[0] for p in points),
                    max(p[1] for p in points))
        assert box_iou(drawn, recorded) > 0.9, (shape, fill, angle, drawn, recorded)


def test_a_diamond_is_never_a_square() -> None:
    for aspect in (1.6, 2.3):
        (x0, y0), (x1, y1), (x2, y2), (x3, y3) = v2._outline("diamond", aspect)
        diagonals = math.dist((x0, y0), (x2, y2)), math.dist((x1, y1), (x3, y3))
        assert max(diagonals) / min(diagonals) >= 1.6


def test_phrasings_vary_and_use_only_the_vocabulary(world: Path) -> None:
    rows = [r for r in _rows(world) if r["kind"] != "absent"]
    texts = [r["text"] for r in rows]
    joined = " ".join(t.lower() for t in texts)
    for word in ("big", "large", "little", "small", "oval", "box", "where is", "?", "that is"):
        assert word in joined, word
    assert any(t.isupper() for t in texts) and any(not t.startswith(("the", "The", "THE")) for t in texts)
    known = set()
    for table in (v2.COLOR_WORDS, v2.SHAPE_WORDS, v2.SIZE_WORDS, v2.SUPERLATIVE_WORDS, v2.RELATION_WORDS,
                  v2.EXTREME_WORDS):
        known |= {w for ws in table.values() for phrase in ws for w in phrase.split()}
    known |= set(v2.ORDINAL_WORDS) | set(v2.GENERIC_NOUNS) | {"middle"}
    known |= {w.lower() for c in v2.CARRIERS for w in c.replace("{}", " ").replace("?", " ").split()}
    known |= {"the", "from", "to", "on", "far", "furthest", "at", "very", "that", "which", "is", "left", "right",
              "top", "bottom", "of"}
    for text in texts:
        for word in re.findall(r"[a-z-]+", text.lower()):
            assert word in known, (word, text)


def test_kinds_and_colours_all_occur(world: Path) -> None:
    rows = _rows(world)
    assert {r["kind"] for r in rows} == {"attribute", "relation", "ordinal", "superlative", "simple", "absent"}
    colours = {o["color"] for r in rows for o in r["objects"]}
    shapes = {o["shape"] for r in rows for o in r["objects"]}
    assert colours == set(v2.COLORS) and shapes == set(v2.SHAPES)
    assert {o["fill"] for r in rows for o in r["objects"]} == {"solid", "striped", "dotted", "outline"}


def test_v1_stays_the_default_of_the_python_function_and_unknown_worlds_fail(tmp_path: Path) -> None:
    write_synthetic(tmp_path / "v1", 10, seed=1)
    assert all("world" not in r and r["image_size"] == [256, 256] for r in _rows(tmp_path / "v1"))
    with pytest.raises(ValueError, match="unknown world"):
        write_synthetic(tmp_path / "x", 10, world="v3")


def test_the_world_is_the_one_the_recorded_numbers_were_measured_on(tmp_path: Path) -> None:
    # The digest of these files as written by commit b8010df (before --corner-squares existed): the default
    # world may grow options, never change.
    write_synthetic(tmp_path, 40, seed=5, world="v2", max_side=400, absent=1.0)
    h = hashlib.sha256()
    for p in sorted(tmp_path.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(tmp_path)).encode())
            h.update(p.read_bytes())
    assert h.hexdigest() == "1e3a037481028b73abe352955c2459fd5279968d7733d72ee6a3b94dc7600560"


def test_corner_squares_stand_on_a_corner_beside_upright_diamonds(tmp_path: Path) -> None:
    write_synthetic(tmp_path, 200, seed=8, world="v2", max_side=400, corner_squares=1.0)
    scenes = {r["image"]: r["objects"] for r in _rows(tmp_path)}
    both = 0
    for objects in scenes.values():
        shapes = {o["shape"] for o in objects}
        both += {"square", "diamond"} <= shapes
        for o in objects:
            off = o["angle"] % 90
            if o["shape"] == "square":
                assert abs(off - 45) <= 6.1, o
            elif o["shape"] == "diamond":
                assert min(off, 90 - off) <= 6.1, o
    # Every scene is drawn with both shapes in its set; a scene of one object holds only one of them.
    assert both >= 0.6 * len(scenes)
    for bad in ({"corner_squares": 1.5}, {"corner_squares": float("nan")}, {"corner_squares": 0.5, "world": "v1"}):
        with pytest.raises(ValueError, match="corner_squares"):
            write_synthetic(tmp_path / "bad", 10, **{"world": "v2", **bad})
    assert not (tmp_path / "bad").exists()
    # Descriptions name squares and diamonds, present and absent.
    texts = " ".join(r["text"].lower() for r in _rows(tmp_path))
    assert "square" in texts and ("diamond" in texts or "rhombus" in texts)
