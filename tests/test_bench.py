"""`ofa-ground bench` (this package alone) and benchmarks/bench.py (beside the reference): the table, the
image sets, the agreement check, and one real (small) run of each."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from conftest import DEVICE, parity_params
from ofa_grounding import Grounder, bench
from ofa_grounding.cli import main
from ofa_grounding.metrics import box_overlap

ROOT = Path(__file__).resolve().parents[1]


def _harness():
    spec = importlib.util.spec_from_file_location("bench_harness", ROOT / "benchmarks" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


def test_synthetic_images_have_mixed_sizes_and_modes(tmp_path: Path) -> None:
    paths = bench.synthetic_images(tmp_path, count=8)
    opened = [Image.open(p) for p in paths]
    assert len({im.size for im in opened}) == 8 and {im.mode for im in opened} == {"RGB", "L", "RGBA"}


def test_box_overlap_orders_corners() -> None:
    assert box_overlap([10, 10, 0, 0], [0, 0, 10, 10]) == pytest.approx(1.0)
    assert box_overlap([5, 5, 5, 9], [5, 5, 5, 9]) == 1.0  # identical, zero area
    assert box_overlap([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150, rel=1e-5)


def test_the_package_bench_knows_nothing_of_the_reference() -> None:
    source = Path(bench.__file__).read_text()
    assert "shared" not in source and "peer" not in source and "sys.path" not in source


@pytest.mark.slow
@pytest.mark.parametrize("ref", parity_params())
def test_agreement_of_fp32_with_the_reference_is_total(ref: Path) -> None:
    """The harness's agreement check on the reference's answers: the small in-repo fixture and ../shared's."""
    harness = _harness()
    doc = json.loads((ref / "cases.json").read_text(encoding="utf-8"))
    model = ref / doc["model_dir"]
    a = harness.agreement(Grounder.from_pretrained(model, device=DEVICE), str(ref / "cases.json"))
    assert a["cases"] == len(doc["cases"]) >= 14 and a["same_tokens"] == 1.0 and a["iou90"] == 1.0
    assert harness.cases_for(str(model), str(ref / "cases.json"))
    assert harness.cases_for(str(ref), str(ref / "cases.json")) == ""


@pytest.mark.slow
def test_bench_runs_end_to_end_on_a_small_model(tiny_model_dir: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for i, size in enumerate([(64, 48), (40, 90), (128, 128)]):
        Image.new("RGB", size, (40 * i, 120, 200)).save(images / f"{i}.png")
    code = main(["bench", "--model", str(tiny_model_dir), "--images", str(images), "--precisions", "fp32,bf16",
                 "--iters", "10", "--json"])
    assert code == 0
    out = capsys.readouterr().out
    assert "16 mixed images, median" in out and "peak RSS" in out
    raw = json.loads(out[out.index("{"):])
    assert [r["impl"] for r in raw["ours"]] == ["ours fp32", "ours bf16"] and "reference" not in raw
    assert raw["ours"][0]["single"]["n"] == 10 and raw["ours"][0]["batch16"]["n"] >= 3


def test_every_number_in_the_table_has_a_label() -> None:
    """Each line of numbers starts with what they are (the max used to sit on a line of its own, unlabelled)."""
    table = bench.format_table([_row("ours fp32", 1.0), _row("ours bf16", 0.5)], _row("reference", 2.0), "head")
    for line in table.splitlines()[2:]:
        assert line[:34].strip(), f"unlabelled line: {line!r}"
    lines = table.splitlines()
    at = lines.index(next(line for line in lines if line.startswith("single query, median of 10 runs")))
    assert lines[at + 1].split()[:2] == ["min", "90.0ms"] and lines[at + 2].split()[:2] == ["max", "200.0ms"]


def _fake_workers(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """`bench` with its measuring processes replaced by a fixed row of the requested mode, on 16 stand-in images;
    returns the list the worker command lines are appended to."""
    commands: list[list[str]] = []

    def fake_worker(cmd: list[str], env: dict | None = None) -> dict:
        commands.append(cmd)
        return {**_row(f"ours {cmd[cmd.index('--worker') + 1]}", 1.0), "torch": "x"}

    monkeypatch.setattr(bench, "run_worker", fake_worker)
    monkeypatch.setattr(bench, "image_set", lambda images, tmp: ["a.png"] * 16)
    return commands


def test_few_iterations_are_allowed_with_a_warning(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture) -> None:
    """--iters 1 to 4 run (the heavier scenarios as often, not 3 times), warning that the medians are noisy;
    --iters 0 is refused."""
    assert {k: n for k, (*_, n) in bench.plan(["a.png"] * 16, 1).items()} == {"single": 1, "five": 1, "batch16": 1}
    assert {k: n for k, (*_, n) in bench.plan(["a.png"] * 16, 3).items()} == {"single": 3, "five": 3, "batch16": 3}
    assert {k: n for k, (*_, n) in bench.plan(["a.png"] * 16, 10).items()} == {"single": 10, "five": 5,
                                                                                 "batch16": 3}
    commands = _fake_workers(monkeypatch)
    assert main(["bench", "--model", str(tiny_model_dir), "--iters", "3", "--precisions", "fp32"]) == 0
    captured = capsys.readouterr()
    assert commands[0][commands[0].index("--iters") + 1] == "3"
    assert "ofa-ground: warning: --iters 3: medians over fewer than 5 runs are noisy" in captured.err
    assert "single query, median" in captured.out
    assert main(["bench", "--model", str(tiny_model_dir), "--iters", "5", "--precisions", "fp32"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert main(["bench", "--model", str(tiny_model_dir), "--iters", "0"]) == 2
    assert capsys.readouterr().err == "ofa-ground: error: --iters must be at least 1, got 0\n"


def test_dtypes_is_a_deprecated_alias_of_precisions(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture) -> None:
    commands = _fake_workers(monkeypatch)
    assert main(["bench", "--model", str(tiny_model_dir), "--iters", "5", "--dtypes", "bf16"]) == 0
    assert [c[c.index("--worker") + 1] for c in commands] == ["bf16"]
    assert capsys.readouterr().err.splitlines()[0] == (
        "ofa-ground: warning: --dtypes is deprecated and will be removed in the next release; use --precisions")


def test_bench_bad_arguments(tiny_model_dir: Path, tmp_path: Path) -> None:
    assert main(["bench", "--model", str(tiny_model_dir), "--precisions", "fp16"]) == 2
    assert main(["bench", "--model", str(tmp_path / "nope")]) == 2


def test_the_reference_side_imports_nothing_heavy() -> None:
    """The peer venv's Python runs benchmarks/bench.py without this package installed: what it imports from
    src/ must be stdlib only (no torch, no numpy), or the reference worker could not start."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import ofa_grounding.bench; "
            "heavy = [m for m in ('torch', 'numpy', 'PIL') if m in sys.modules]; assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code, str(ROOT / "src")], check=True)


@pytest.mark.slow
def test_the_harness_runs_without_the_reference(tiny_model_dir: Path, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--model", str(tiny_model_dir),
                           "--precisions", "fp32", "--iters", "10", "--no-reference", "--json"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    raw = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert [r["impl"] for r in raw["ours"]] == ["ours fp32"] and raw["reference"] is None
