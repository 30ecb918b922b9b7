"""The bundled demo model (src/ofa_grounding/models/demo): it ships, it is small, and it grounds what it was
trained for: the example image's four shapes, and synthetic scenes of a seed it never saw."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ofa_grounding import DEFAULT_MODEL, Grounder
from ofa_grounding.metrics import box_iou

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "shapes.png"
# examples/README.md: where each shape was drawn
SHAPES = {"the red circle": (60, 180, 200, 320), "the blue square": (420, 200, 560, 340),
          "the green triangle": (230, 60, 370, 180), "the small yellow circle": (280, 360, 360, 440)}


@pytest.fixture(scope="module")
def demo() -> Grounder:
    return Grounder.from_pretrained()  # no path: the bundled model


def test_the_demo_model_ships_and_is_small() -> None:
    assert (DEFAULT_MODEL / "model.safetensors").is_file()
    size = sum(p.stat().st_size for p in DEFAULT_MODEL.iterdir() if p.is_file())
    assert size <= 25 * 2**20, size
    assert (DEFAULT_MODEL / "README.md").read_text().startswith("# demo")


def test_the_four_example_shapes_land_in_their_boxes(demo: Grounder) -> None:
    results = demo.predict(EXAMPLE, list(SHAPES))
    for r, (text, box) in zip(results, SHAPES.items()):
        assert box_iou(r.box, box) >= 0.85, (text, r.box, box)
        assert r.found and r.calibrated and r.confidence >= 0.5, (text, r.confidence)


def test_an_absent_object_is_not_found(demo: Grounder) -> None:
    absent = demo.predict(EXAMPLE, ["the purple star", "the orange hexagon"])
    assert not any(r.found for r in absent), [(r.text, r.box, r.tokens) for r in absent]


@pytest.mark.slow
def test_it_grounds_scenes_of_an_unseen_seed(demo: Grounder, tmp_path: Path) -> None:
    from ofa_grounding.data import open_dataset
    from ofa_grounding.evaluate import evaluate
    from ofa_grounding.synthetic import write_synthetic

    write_synthetic(tmp_path, 1500, seed=4242)  # a seed nothing was trained or tuned on; test split ~150
    report = evaluate(demo, open_dataset(tmp_path, split="test"), "test", progress=False)
    count, acc = report.summary["count"], report.summary["acc50"]
    # the best trivial baseline (the largest object of the named shape) scores about 32 %
    assert count >= 100 and acc >= 0.60, (count, acc)


@pytest.mark.slow
def test_it_grounds_wide_world_scenes_of_an_unseen_seed(demo: Grounder, tmp_path: Path) -> None:
    from ofa_grounding.data import open_dataset
    from ofa_grounding.evaluate import evaluate
    from ofa_grounding.synthetic import write_synthetic

    # any canvas, dark or light, tilted shapes, 12 colours; a seed nothing was trained or tuned on
    write_synthetic(tmp_path, 800, seed=4243, world="v2", max_side=640)
    report = evaluate(demo, open_dataset(tmp_path, split="test"), "test", progress=False)
    count, acc = report.summary["count"], report.summary["acc50"]
    # the best trivial baseline scores about 40 % there (the model card); the model about 67 %
    assert count >= 50 and acc >= 0.5, (count, acc)


def test_the_first_readme_command_needs_no_model_argument() -> None:
    done = subprocess.run([sys.executable, "-m", "ofa_grounding.cli", "predict", str(EXAMPLE), "the red circle",
                           "--json"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    import json

    box = json.loads(done.stdout)["results"][0]["box"]
    assert box_iou(box, SHAPES["the red circle"]) >= 0.5, box
