"""`ofa-ground bench`: the table, the image set, the agreement check, and one real (small) run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from PIL import Image

from ofa_grounding import Grounder, bench
from ofa_grounding.cli import main


def _row(impl: str, scale: float) -> dict:
    timing = {"median": 0.1 * scale, "min": 0.09 * scale, "max": 0.2 * scale, "n": 10}
    return {"impl": impl, "single": timing, "five": timing, "batch16": timing, "load_s": 1.0, "cold_start_s": 2.0,
            "peak_rss_mb": 500.0}


def test_table_has_ratios_against_the_reference() -> None:
    table = bench.format_table([_row("ours fp32", 1.0), _row("ours bf16", 0.5)], _row("reference", 2.0), "head")
    lines = table.splitlines()
    assert lines[0] == "head"
    single = next(line for line in lines if line.startswith("single query, median"))
    assert single.split()[-2:] == ["2.00x", "4.00x"]  # reference / ours, per mode
    assert "reference" not in bench.format_table([_row("ours fp32", 1.0)], None, "head").splitlines()[1]


def test_mixed_images_are_distinct_files(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i, size in enumerate([(30, 20), (16, 40), (25, 25)]):
        Image.new("RGB", size, (i * 80, 0, 0)).save(src / f"{i}.png")
    out = tmp_path / "out"
    out.mkdir()
    paths = bench.mixed_images(src, out, count=7)
    assert len(paths) == len(set(paths)) == 7 and all(Path(p).is_file() for p in paths)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no images"):
        bench.mixed_images(empty, out)


def test_box_overlap_orders_corners() -> None:
    assert bench.box_overlap([10, 10, 0, 0], [0, 0, 10, 10]) == pytest.approx(1.0)
    assert bench.box_overlap([5, 5, 5, 9], [5, 5, 5, 9]) == 1.0  # identical, zero area
    assert bench.box_overlap([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150, rel=1e-5)


@pytest.mark.slow
def test_agreement_of_fp32_with_the_reference_is_total(reference_dir: Path, reference_grounder: Grounder) -> None:
    a = bench.agreement(reference_grounder, str(reference_dir / "cases.json"))
    assert a["cases"] > 50 and a["same_tokens"] == 1.0 and a["iou90"] == 1.0
    assert bench._cases_for(str(reference_dir / "ofa-tiny-random"), str(reference_dir / "cases.json"))
    assert bench._cases_for(str(reference_dir), str(reference_dir / "cases.json")) == ""


@pytest.mark.slow
def test_bench_runs_end_to_end_on_a_small_model(tiny_model_dir: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for i, size in enumerate([(64, 48), (40, 90), (128, 128)]):
        Image.new("RGB", size, (40 * i, 120, 200)).save(images / f"{i}.png")
    code = main(["bench", "--model", str(tiny_model_dir), "--images", str(images), "--dtypes", "fp32,bf16",
                 "--iters", "10", "--no-reference", "--json"])
    assert code == 0
    out = capsys.readouterr().out
    assert "16 mixed images, median" in out and "peak RSS" in out
    raw = json.loads(out[out.index("{"):])
    assert [r["impl"] for r in raw["ours"]] == ["ours fp32", "ours bf16"] and raw["reference"] is None
    assert raw["ours"][0]["single"]["n"] == 10 and raw["ours"][0]["batch16"]["n"] >= 3


def test_bench_bad_arguments(tiny_model_dir: Path, tmp_path: Path) -> None:
    assert main(["bench", "--model", str(tiny_model_dir), "--iters", "3"]) == 2
    assert main(["bench", "--model", str(tiny_model_dir), "--dtypes", "fp16"]) == 2
    assert main(["bench", "--model", str(tmp_path / "nope")]) == 2


def test_reference_worker_does_not_see_our_modules(monkeypatch) -> None:
    """Run as a script, bench.py has its folder on sys.path, where our `fairseq.py` would shadow the
    `fairseq` the reference imports; the reference worker drops that folder first."""
    here = str(Path(bench.__file__).resolve().parent)
    monkeypatch.setattr(sys, "path", [here, *sys.path])
    bench.drop_package_dir_from_path()
    assert here not in sys.path and (Path(here) / "fairseq.py").exists()
