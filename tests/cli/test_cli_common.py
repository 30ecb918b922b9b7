"""The `ofa-ground` contract common to every command: exit codes, one-line errors, --help, extras."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ofa_grounding.cli import main


def test_exit_codes_and_one_line_errors(small_model_dir: Path, small_reference_dir: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture) -> None:
    image = str(small_reference_dir / "images/scene_rgb_320x240.png")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    runs = {
        2: [["predict", "--model", str(tmp_path), image, "x"],  # not a checkpoint
            ["predict", "--model", str(small_model_dir), image],  # no text
            ["predict", "--model", str(small_model_dir), "--jsonl", str(tmp_path / "none.jsonl")],
            ["predict", "--model", str(small_model_dir), image, "x", "--jsonl", "f"],
            ["predict", "--model", str(small_model_dir), "--device", "nonsense", image, "x"],
            ["predict", "--model", str(small_model_dir), "--cache-mb", "-1", image, "x"]],
        1: [["predict", "--model", str(small_model_dir), str(bad), "x"],
            ["predict", "--model", str(small_model_dir), str(tmp_path / "nope.png"), "x"]],
    }
    for code, argvs in runs.items():
        for argv in argvs:
            assert main(argv) == code, argv
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert main(["predict"]) == 2  # nothing to ground
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(["predict", "--no-such-option"])
    assert info.value.code == 2


@pytest.mark.slow
def test_console_script_runs(small_model_dir: Path, small_reference_dir: Path) -> None:
    image = str(small_reference_dir / "images/scene_tiny_23x17.png")
    proc = subprocess.run([sys.executable, "-m", "ofa_grounding.cli", "predict", "--model", str(small_model_dir),
                           image, "a blue square", "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["width"] == 23


def test_missing_extras_name_the_install_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "uvicorn", None)
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    assert main(["serve"]) == 2
    assert "serve needs the serve extra (uvicorn is missing): pip install 'ofa-grounding[serve]'" in \
        capsys.readouterr().err
    assert main(["export-onnx", "x", str(tmp_path / "o")]) == 2
    assert "pip install 'ofa-grounding[onnx]'" in capsys.readouterr().err


@pytest.mark.slow
def test_help_and_version_do_not_import_torch() -> None:
    """`--help`/`--version` took 3.6-5.9 s when the package imported torch at import time."""
    import subprocess
    import sys

    code = ("import sys, ofa_grounding, ofa_grounding.cli as c\n"
            "for argv in (['--help'], ['predict', '--help'], ['--version'], ['train', '--help']):\n"
            "    try:\n        c.main(argv)\n    except SystemExit:\n        pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n"
            "assert ofa_grounding.Grounder.__name__ == 'Grounder' and 'torch' in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
