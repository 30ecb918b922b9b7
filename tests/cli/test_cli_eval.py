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
