"""`ofa-ground eval` from the command line (the evaluation itself: tests/test_evaluate.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ofa_grounding.cli import main


def test_eval_without_usable_samples_fails_with_one_line(tiny_model_dir: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "test.jsonl").write_text("")
    assert main(["eval", "--model", str(tiny_model_dir), "--data", str(tmp_path), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"ofa-ground: error: --data {tmp_path}: no usable samples (split test)"]
    (tmp_path / "test.jsonl").write_text('{"image": "missing.png", "text": "x", "box": [0, 0, 5, 5]}\n')
    assert main(["eval", "--model", str(tiny_model_dir), "--data", str(tmp_path), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[0].startswith("ofa-ground: error: skipped:") and "1 skipped" in err[1]
    assert main(["eval", "--model", str(tiny_model_dir), "--data", str(tmp_path / "nope.jsonl")]) == 2
    missing = tmp_path / "nope.jsonl"
    assert capsys.readouterr().err.strip() == f"ofa-ground: error: --data {missing}: no such file or folder"


def _tiny_dataset(folder: Path, images: Path) -> Path:
    """A JSONL split of a few rows over the small fixture's two images: runs of one image, an absent object's row
    and a row whose image is missing (skipped, listed on stderr)."""
    import json
    import shutil

    folder.mkdir()
    for image in images.iterdir():
        shutil.copy(image, folder / image.name)
    rgb, rgba = "noise_rgb_200x150.png", "noise_rgba_120x160.png"
    rows = [(rgb, "the left half", [0, 0, 100, 150]), (rgb, "a square", [50, 30, 120, 100]),
            (rgba, "the top", [0, 0, 120, 80]), (rgba, "a purple star", None), (rgb, "the bottom", [0, 75, 200, 150]),
            ("missing.png", "nothing", [0, 0, 5, 5]), (rgba, "the middle", [30, 40, 90, 120]),
            (rgb, "everything", [0, 0, 200, 150])]
    with (folder / "test.jsonl").open("w") as f:
        for i, (image, text, box) in enumerate(rows):
            f.write(json.dumps({"id": f"r{i}", "image": image, "text": text, "box": box}) + "\n")
    return folder


def test_eval_workers_report_what_one_process_does(small_model_dir: Path, small_reference_dir: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    """`eval --workers 2`: two single-thread processes, each a share of the samples, merged into the summary and
    the predictions file of one process (only the time taken, and the count of processes, differ)."""
    import json

    data = _tiny_dataset(tmp_path / "data", small_reference_dir / "images")
    summaries, predictions = [], []
    for workers in ("1", "2"):
        out = tmp_path / f"preds-{workers}.jsonl"
        assert main(["eval", "--model", str(small_model_dir), "--data", str(data), "--json", "--no-progress",
                     "--batch-size", "2", "--workers", workers, "--threads", "1", "--out", str(out)]) == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary.pop("processes") == int(workers)
        for split in summary["splits"].values():
            split.pop("seconds")
        summaries.append(summary)
        predictions.append(out.read_text())
    assert summaries[0] == summaries[1]
    assert summaries[0]["splits"]["test"]["count"] == 6 and summaries[0]["splits"]["test"]["skipped"] == 1
    assert predictions[0] == predictions[1] and len(predictions[0].splitlines()) == 7


def test_eval_workers_usage_and_a_model_that_fails_to_load(tmp_path: Path, small_reference_dir: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture) -> None:
    data = _tiny_dataset(tmp_path / "data", small_reference_dir / "images")
    assert main(["eval", "--data", str(data), "--workers", "0"]) == 2
    assert capsys.readouterr().err.strip() == "ofa-ground: error: --workers must be at least 1, got 0"
    assert main(["eval", "--data", str(data), "--limit", "0"]) == 2
    assert capsys.readouterr().err.strip() == "ofa-ground: error: --limit must be at least 1, got 0"
    with monkeypatch.context() as m:
        m.setenv("WORLD_SIZE", "2")
        assert main(["eval", "--data", str(data), "--workers", "2"]) == 2
        assert "under torchrun each process is one worker" in capsys.readouterr().err
    # each worker fails to load the model: the reason, once, and no worker left behind
    assert main(["eval", "--model", str(tmp_path / "no-model"), "--data", str(data), "--workers", "2",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ofa-ground: error: --model"), err
    import multiprocessing

    assert multiprocessing.active_children() == []


def test_default_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """--workers left out: the idle cores on a CPU, 1 on a GPU or under torchrun."""
    from ofa_grounding.cli import workers

    monkeypatch.setattr(workers, "default_threads", lambda: 3)
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    assert workers.default_workers(None, torchrun=False) == 3
    assert workers.default_workers("cpu", torchrun=True) == 1
    assert workers.default_workers("cuda:0", torchrun=False) == 1
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")
    assert workers.default_workers("cpu", torchrun=False) == 1
