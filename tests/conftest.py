"""Shared fixtures: the small reference fixture in tests/fixtures/small-reference (always there), the large
reference fixtures in ../shared/reference (tests marked `reference`, skipped with one line where absent) and a
tiny model.

Behaviour tests use the in-repository fixtures; only tests that compare with the large fixtures' reference outputs
use `reference_dir` & co., and they must be marked `@pytest.mark.reference` (checked at collection)."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import IO

import pytest
import torch

from ofa_grounding.checkpoint import save_checkpoint
from ofa_grounding.config import GenerationConfig, OFAConfig, PreprocessConfig
from ofa_grounding.model import OFAModel, init_weights
from ofa_grounding.tokenizer import ASSETS_DIR

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("OFA_SHARED_DIR", ROOT.parent / "shared"))
REFERENCE = SHARED / "reference"
# In the repository: a d_model 64 random OFA in ModelScope's layout and 14 cases answered by ModelScope's pipeline.
SMALL_REFERENCE = ROOT / "tests" / "fixtures" / "small-reference"
# More reference fixture folders laid out like ../shared/reference (cases.json + model dir + images),
# e.g. one built with `make_reference_fixtures.py hidden`; separated by os.pathsep.
# The parity tests' device: OFA_TEST_DEVICE=cuda runs them on a GPU (the same expected values).
DEVICE = os.environ.get("OFA_TEST_DEVICE", "cpu")
EXTRA_REFERENCES = [Path(p) for p in os.environ.get("OFA_EXTRA_REFERENCE", "").split(os.pathsep) if p]

torch.set_num_threads(min(2, torch.get_num_threads()))


def free_port() -> int:
    """A loopback port free now (another run's may still be held for a while after it ends)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served(args: list[str], log: IO[str], ready: Callable[[int], object],
           timeout_s: float = 180) -> Iterator[tuple[subprocess.Popen, int]]:
    """`ofa-ground serve ARGS --port P` in a subprocess, its output to `log`: yields (process, P) once
    `ready(P)` returns without an OSError, and stops the server with SIGINT (then kill) on the way out."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "ofa_grounding.cli", "serve", *args, "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                ready(port)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise AssertionError(f"the server did not answer in {timeout_s:.0f} s: "
                                         f"{log.read()[-4000:]}") from None
                time.sleep(0.3)
        yield proc, port
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def reference_dirs() -> list[Path]:
    return [REFERENCE, *EXTRA_REFERENCES]


def reference_params() -> list:
    """`reference_dirs()` as parameters marked `reference` (the large fixtures and OFA_EXTRA_REFERENCE's)."""
    return [pytest.param(p, marks=pytest.mark.reference, id=p.name) for p in reference_dirs()]


def parity_params() -> list:
    """For a test that takes a fixture folder `ref`: the small in-repo one, and ../shared/reference marked
    `reference`."""
    return [pytest.param(SMALL_REFERENCE, id="small"),
            pytest.param(REFERENCE, marks=pytest.mark.reference, id="reference")]


def missing(path: Path) -> str:
    """The one line a `reference` test skips with."""
    shown = f"../{path.relative_to(ROOT.parent)}" if path.is_relative_to(ROOT.parent) else str(path)
    if path == REFERENCE:
        return (f"needs {shown} (the large parity fixtures): put the project's shared/ folder beside the checkout "
                "or set OFA_SHARED_DIR; the in-repo fixtures run everything else")
    return f"needs {shown} (a reference fixture folder named in OFA_EXTRA_REFERENCE), not found"


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(missing(path))
    return path


REFERENCE_FIXTURES = {"reference_dir", "reference_cases", "reference_model_dir", "reference_grounder", "golden"}


def _uses_reference(item: pytest.Item) -> bool:
    params = getattr(item, "callspec", None)
    values = params.params.values() if params else ()
    return bool(REFERENCE_FIXTURES & set(getattr(item, "fixturenames", ()))) or any(
        isinstance(v, Path) and v in reference_dirs() for v in values)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test on the large fixtures must say so: marked `reference`, it skips with one line where they are absent
    (and `-m "not reference"` leaves it out)."""
    unmarked = [item.nodeid for item in items if _uses_reference(item) and not item.get_closest_marker("reference")]
    if unmarked:
        raise pytest.UsageError("these tests use ../shared/reference but are not marked @pytest.mark.reference: "
                                + ", ".join(unmarked))


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("reference") is None:
        return
    params = getattr(item, "callspec", None)
    dirs = [v for v in (params.params.values() if params else ()) if isinstance(v, Path) and v in reference_dirs()]
    for path in dirs or [REFERENCE]:
        require(path)


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    return require(REFERENCE)


@pytest.fixture(scope="session")
def reference_cases(reference_dir: Path) -> list[dict]:
    return json.loads((reference_dir / "cases.json").read_text(encoding="utf-8"))["cases"]


@pytest.fixture(scope="session")
def reference_model_dir(reference_dir: Path) -> Path:
    return reference_dir / "ofa-tiny-random"


@pytest.fixture(scope="session")
def reference_grounder(reference_model_dir: Path):
    from ofa_grounding import Grounder

    return Grounder.from_pretrained(reference_model_dir, device=DEVICE)


@pytest.fixture(scope="session")
def golden(reference_dir: Path):
    import numpy as np

    return dict(np.load(reference_dir / "golden.npz"))


@pytest.fixture(scope="session")
def small_reference_dir() -> Path:
    """tests/fixtures/small-reference: cases.json, images/ and the model folder ofa-d64-random (its README.md)."""
    return SMALL_REFERENCE


@pytest.fixture(scope="session")
def small_cases() -> list[dict]:
    """The small fixture's 14 cases with the reference's answers (fields as in ../shared/reference/cases.json)."""
    return json.loads((SMALL_REFERENCE / "cases.json").read_text(encoding="utf-8"))["cases"]


@pytest.fixture(scope="session")
def small_model_dir() -> Path:
    """A random OFA (d_model 64, 1+1 layers, resnet18, 256 px) in ModelScope's layout, float16 as the large one."""
    return SMALL_REFERENCE / "ofa-d64-random"


@pytest.fixture(scope="session")
def small_grounder(small_model_dir: Path):
    from ofa_grounding import Grounder

    return Grounder.from_pretrained(small_model_dir, device=DEVICE)


TINY_CONFIG = dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                   decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, resnet_type="resnet18")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small random model (d 32, 2+2 layers, 128 px images) saved in our layout."""
    torch.manual_seed(0)
    model = init_weights(OFAModel(OFAConfig(**TINY_CONFIG)), std=0.2).eval()
    out = tmp_path_factory.mktemp("tiny-model")
    return save_checkpoint(out, model, ASSETS_DIR, PreprocessConfig(patch_image_size=128, max_image_size=128),
                           GenerationConfig())


@pytest.fixture(scope="session")
def load_script():
    """load_script("name") -> scripts/name.py as a module (scripts/ is not a package: tests load them by path)."""
    def load(name: str) -> ModuleType:
        path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return load
