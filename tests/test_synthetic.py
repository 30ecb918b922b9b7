from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from ofa_grounding.synthetic import SceneObject, baseline_accuracies, resolve, write_synthetic


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _rows(folder: Path) -> list[dict]:
    return [json.loads(line) for split in ("train", "val", "test") for line in (folder / f"{split}.jsonl").open()]


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("syn")
    write_synthetic(out, 300, seed=5)
    return out


@pytest.mark.slow
def test_same_seed_same_bytes(tmp_path: Path, bench: Path) -> None:
    write_synthetic(tmp_path / "again", 300, seed=5)
    assert _digest(tmp_path / "again") == _digest(bench)
    write_synthetic(tmp_path / "other", 300, seed=6)
    assert _digest(tmp_path / "other") != _digest(bench)


@pytest.mark.slow
def test_worker_processes_write_the_same_bytes(tmp_path: Path, bench: Path) -> None:
    write_synthetic(tmp_path / "parallel", 300, seed=5, workers=2)
    assert _digest(tmp_path / "parallel") == _digest(bench)


def test_more_samples_only_add_scenes(tmp_path: Path, bench: Path) -> None:
    write_synthetic(tmp_path / "small", 40, seed=5)
    small = _digest(tmp_path / "small")
    big = _digest(bench)
    assert all(big[name] == digest for name, digest in small.items() if name.startswith("images/"))


def test_every_expression_picks_exactly_its_target(bench: Path) -> None:
    rows = _rows(bench)
    assert len(rows) == 300
    for row in rows:
        objects = [SceneObject(**{**o, "box": tuple(o["box"])}) for o in row["objects"]]
        assert resolve(row["expression"], objects) == [row["target"]], row["id"]
        assert row["box"] == row["objects"][row["target"]]["box"]
        assert row["expression"]["desc"].get("shape", "shape") in row["text"]
    assert {r["kind"] for r in rows} == {"attribute", "relation", "ordinal", "superlative"}


def test_splits_have_disjoint_scenes(bench: Path) -> None:
    images = {split: {json.loads(line)["image"] for line in (bench / f"{split}.jsonl").open()}
              for split in ("train", "val", "test")}
    assert images["train"] and images["val"] and images["test"]
    assert not (images["train"] & images["val"] or images["train"] & images["test"] or images["val"] & images["test"])


def test_trivial_baselines_stay_below_40_percent(bench: Path) -> None:
    accuracies = baseline_accuracies(_rows(bench))
    assert len(accuracies) == 4
    assert all(acc < 0.40 for acc in accuracies.values()), accuracies


def test_relation_semantics() -> None:
    red_left = SceneObject("circle", "red", "small", "solid", (10, 100, 30, 120))
    red_right = SceneObject("circle", "red", "small", "solid", (200, 100, 220, 120))
    anchor = SceneObject("square", "blue", "large", "solid", (100, 90, 150, 140))
    objects = [red_left, red_right, anchor]
    expr = {"kind": "relation", "desc": {"color": "red", "shape": "circle"}, "anchor": {"shape": "square"},
            "relation": "left of"}
    assert resolve(expr, objects) == [0]
    assert resolve({**expr, "relation": "right of"}, objects) == [1]
    assert resolve({**expr, "relation": "above"}, objects) == []
    assert resolve({"kind": "ordinal", "desc": {"shape": "circle"}, "direction": "right", "index": 0}, objects) == [1]
    assert resolve({"kind": "superlative", "desc": {"color": "red"}, "extreme": "largest"}, objects) == []  # a tie


def test_simple_training_expressions_leave_the_benchmark_unchanged(tmp_path: Path, bench: Path) -> None:
    write_synthetic(tmp_path / "simple", 300, seed=5, simple=3)
    plain, extra = _rows(bench), _rows(tmp_path / "simple")
    assert [r for r in extra if r["kind"] != "simple"] == plain
    simple = [r for r in extra if r["kind"] == "simple"]
    assert simple and {r["split"] for r in simple} == {"train"}
    train_scenes = {r["image"] for r in plain if r["split"] == "train"}
    assert {r["image"] for r in simple} <= train_scenes
    per_scene: dict[str, int] = {}
    for row in simple:
        objects = [SceneObject(**{**o, "box": tuple(o["box"])}) for o in row["objects"]]
        assert resolve(row["expression"], objects) == [row["target"]], row["id"]
        assert row["box"] == row["objects"][row["target"]]["box"]
        per_scene[row["image"]] = per_scene.get(row["image"], 0) + 1
    assert max(per_scene.values()) <= 3


def test_absent_expressions_name_no_object_of_the_scene(bench: Path) -> None:
    import random

    from ofa_grounding.synthetic import absent_expressions

    rows = _rows(bench)[:50]
    rng = random.Random(0)
    hard = 0
    for row in rows:
        texts = absent_expressions(row["objects"], rng, 4)
        assert len(texts) == len(set(texts)) >= 2
        colors, shapes = {o["color"] for o in row["objects"]}, {o["shape"] for o in row["objects"]}
        for text in texts:
            _, color, shape = text.split()
            expr = {"kind": "attribute", "desc": {"color": color, "shape": shape}}
            objects = [SceneObject(**{**o, "box": tuple(o["box"])}) for o in row["objects"]]
            assert resolve(expr, objects) == [], text
            hard += color in colors and shape in shapes
    assert hard >= 50  # about half name a colour and a shape the scene has, never together


def test_make_synthetic_shows_progress_unless_told_not_to(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """make-synthetic was silent for minutes: a bar on stderr counts the samples as scenes are drawn (issue 28);
    --no-progress and the library's default leave it out, and the files are the same either way."""
    from ofa_grounding.cli import main

    args = ["--world", "v1", "--n", "12", "--seed", "2", "--size", "64", "--json"]
    assert main(["make-synthetic", str(tmp_path / "shown"), *args]) == 0
    captured = capsys.readouterr()
    assert "drawing: 100%" in captured.err and "| 12/12 [" in captured.err, captured.err
    assert "drawing:" not in captured.out and json.loads(captured.out)["counts"]
    assert main(["make-synthetic", str(tmp_path / "quiet"), *args, "--no-progress"]) == 0
    assert "drawing:" not in capsys.readouterr().err
    write_synthetic(tmp_path / "library", 12, seed=2, size=(64, 64))
    assert "drawing:" not in capsys.readouterr().err
    assert _digest(tmp_path / "shown") == _digest(tmp_path / "quiet") == _digest(tmp_path / "library")
