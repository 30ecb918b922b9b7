"""`ofa-ground train` / `distill` run in fresh processes, as a user runs them (shared by the train tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run_cli(args: list[str], nproc: int = 1, command: str = "train") -> subprocess.CompletedProcess:
    """`ofa-ground COMMAND ARGS --no-progress`, under torchrun when `nproc` > 1."""
    launcher = ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", str(free_port())]
    launcher = launcher if nproc > 1 else []
    return subprocess.run([sys.executable, *launcher, "-m", "ofa_grounding.cli", command, *args, "--no-progress"],
                          capture_output=True, text=True, timeout=900, cwd=ROOT, env=_ENV)


# `ofa-ground train ARGS` in a process that SIGKILLs itself after update N (from the trainer's per-update hook)
_KILLED_AFTER = """
import os, signal, sys
from ofa_grounding.cli import build_parser
from ofa_grounding.cli.train import training_config
from ofa_grounding.train.loop import train

n, args = int(sys.argv[1]), build_parser().parse_args(sys.argv[2:])
train(training_config(args), on_update=lambda step: step == n and os.kill(os.getpid(), signal.SIGKILL))
"""


def run_killed_after(n: int, args: list[str]) -> subprocess.CompletedProcess:
    """`ofa-ground train ARGS`, killed by SIGKILL right after update `n` (no clean-up can run)."""
    return subprocess.run([sys.executable, "-c", _KILLED_AFTER, str(n), "train", *args, "--no-progress"],
                          capture_output=True, text=True, timeout=900, cwd=ROOT, env=_ENV)
