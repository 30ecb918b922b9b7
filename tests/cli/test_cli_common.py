"""The `ofa-ground` contract common to every command: exit codes, one-line errors, --help, extras."""

from __future__ import annotations

import io
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


def test_every_computing_command_takes_threads_and_checks_it(small_model_dir: Path, small_reference_dir: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    from ofa_grounding.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    for name in ("predict", "eval", "calibrate", "train", "distill", "serve", "bench"):
        assert "--threads" in commands[name]._option_string_actions, name
    image = str(small_reference_dir / "images/scene_tiny_23x17.png")
    assert main(["predict", "--model", str(small_model_dir), "--threads", "0", image, "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "ofa-ground: error: --threads must be at least 1, got 0"


def test_bad_loading_settings_are_named(small_model_dir: Path, small_reference_dir: Path,
                                        capsys: pytest.CaptureFixture) -> None:
    """Each bad setting of the model's loading is refused with its own option's name (exit 2, one line)."""
    image = str(small_reference_dir / "images/scene_tiny_23x17.png")
    for more, message in ((["--max-pixels", "0"], "--max-pixels must be at least 1, got 0"),
                          (["--cache-mb", "-1"], "--cache-mb must not be negative"),
                          (["--device", "bogus"], "--device bogus: device 'bogus' is not a torch device")):
        assert main(["predict", "--model", str(small_model_dir), image, "x", *more]) == 2, more
        err = capsys.readouterr().err
        assert err.startswith(f"ofa-ground: error: {message}") and err.count("\n") == 1, err


def test_set_threads_follows_the_argument_then_omp_then_the_idle_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from ofa_grounding.cli import common

    before = torch.get_num_threads()
    try:
        monkeypatch.setattr(common, "default_threads", lambda: 3)
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        assert common.set_threads(2) == 2 and torch.get_num_threads() == 2
        assert common.set_threads(None) == 3 and torch.get_num_threads() == 3
        monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the user's (or torchrun's): torch's own setting stays
        torch.set_num_threads(1)
        assert common.set_threads(None) == 1 and torch.get_num_threads() == 1
        assert common.set_threads(2) == 2  # --threads wins over it
    finally:
        torch.set_num_threads(before)


def test_default_threads_counts_the_idle_cores_it_may_use(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from ofa_grounding.cli import common

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(common, "cpu_quota", lambda: None)
    for idle, threads in ((4.0, 4), (2.6, 3), (1.2, 1), (0.0, 1)):  # idle cores, rounded, at least 1
        monkeypatch.setattr(common, "idle_cpus", lambda cpus, idle=idle: idle)
        assert common.default_threads() == threads, idle
    monkeypatch.setattr(common, "idle_cpus", lambda cpus: 4.0)
    monkeypatch.setattr(common, "cpu_quota", lambda: 2)  # a container's CPU limit caps it
    assert common.default_threads() == 2
    monkeypatch.setattr(common, "idle_cpus", lambda cpus: None)  # no /proc/stat: the load average
    monkeypatch.setattr(os, "getloadavg", lambda: (3.2, 0.0, 0.0))
    assert common.default_threads() == 1


def test_idle_cpus_reads_this_machines_counters() -> None:
    import os

    from ofa_grounding.cli.common import idle_cpus

    if not os.path.exists("/proc/stat"):
        pytest.skip("no /proc/stat (not Linux)")
    cpus = os.sched_getaffinity(0)
    idle = idle_cpus(cpus, seconds=0.05)
    assert idle is not None and 0 <= idle <= len(cpus)


def test_help_shows_every_default() -> None:
    """Every option with a default to show (not a switch, not None) says it in --help, in its own words or in the
    " (default: X)" the formatter appends."""
    import argparse

    from ofa_grounding.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    for name, parser in commands.items():
        formatter = parser._get_formatter()
        for action in parser._actions:
            if action.option_strings and action.nargs != 0 and not action.required \
                    and action.default not in (None, "", argparse.SUPPRESS):  # argparse prints no help of None
                assert action.help and "default" in formatter._expand_help(action).lower(), (name, action.dest)
    train_help = commands["train"].format_help()
    assert "(default: 5e-05)" in train_help and "(default: 500)" in train_help
    assert "(default: 0.0001)" in commands["distill"].format_help()  # distill's own defaults


def test_a_reader_that_closes_early_ends_quietly_with_141(small_model_dir: Path, small_reference_dir: Path) -> None:
    """`ofa-ground predict ... | head` ended with "unexpected BrokenPipeError" (issue 28): stdout's reader gone,
    the command stops quietly with 141 (128 + SIGPIPE, as a Unix tool killed by SIGPIPE)."""
    image = str(small_reference_dir / "images/scene_rgb_320x240.png")
    proc = subprocess.Popen([sys.executable, "-m", "ofa_grounding.cli", "predict", "--model", str(small_model_dir),
                             image, "the red circle", "the blue square", "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # the reader goes away before the first line is written: that write must fail
    err = proc.stderr.read()
    assert proc.wait(timeout=300) == 141, err
    assert err == "", err


class _GonePipe:
    """A stdout whose reader has gone away."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")

    def fileno(self) -> int:
        raise io.UnsupportedOperation("fileno")


def test_broken_pipe_in_process_is_141_without_a_message(small_model_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(sys, "stdout", _GonePipe())
    assert main(["info", str(small_model_dir)]) == 141
    assert capsys.readouterr().err == ""
