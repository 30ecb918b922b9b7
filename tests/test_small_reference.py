"""Parity with the reference on the small fixture committed in tests/fixtures/small-reference.

The fixture (a random-weight OFA with d_model 64, 1+1 layers, 256 px images, and modelscope 1.40.2's
answers for single queries) lives inside the repository, so these checks run in a fresh clone without
../shared. See tests/fixtures/small-reference/README.md for the architecture and how it was made.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import DEVICE
from ofa_grounding import Grounder

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "small-reference"
DOC = json.loads((FIXTURE / "cases.json").read_text(encoding="utf-8"))
CASES = DOC["cases"]

# The tolerances of test_predictor.py's parity checks on ../shared/reference.
BOX_TOL = 1e-3  # pixels
SCORE_TOL = 1e-4 if DEVICE == "cpu" else 2e-3  # log-prob units


@pytest.fixture(scope="module")
def grounder() -> Grounder:
    return Grounder.from_pretrained(FIXTURE / DOC["model_dir"], device=DEVICE)


def test_fixture_is_complete_and_intact() -> None:
    model = FIXTURE / DOC["model_dir"]
    for name in ("configuration.json", "config.json", "vocab.json", "merges.txt", "pytorch_model.bin"):
        assert (model / name).is_file(), name
    for name, meta in DOC["images"].items():
        assert hashlib.sha256((FIXTURE / name).read_bytes()).hexdigest() == meta["sha256"], name
    assert len(CASES) >= 12 and not any("error" in c for c in CASES)
    assert any(c["text"] == "" for c in CASES)
    assert len({len(c["input_ids"]) for c in CASES}) >= 8  # texts of many token lengths
    assert len({json.dumps(c["box"]) for c in CASES}) == len(CASES)  # boxes depend on image and text


def test_model_loads_at_its_image_size(grounder: Grounder) -> None:
    assert grounder.preprocess.patch_image_size == DOC["provenance"]["patch_image_size"] == 256


def _check(r, case: dict) -> None:
    assert r.tokens == tuple(case["tokens"]), case["id"]
    np.testing.assert_allclose(r.box, case["box"], atol=BOX_TOL, rtol=0, err_msg=case["id"])
    assert abs(r.score - case["score"]) < SCORE_TOL, (case["id"], r.score, case["score"])
    assert list(r.image_size) == DOC["images"][case["image"]]["size_wh_after_reference_load"], case["id"]


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_single_query_matches_the_reference(grounder: Grounder, case: dict) -> None:
    ids, _ = grounder.tokenize_text(case["text"])
    assert ids == case["input_ids"], case["id"]
    r = grounder.predict(FIXTURE / case["image"], case["text"])
    _check(r, case)
    ours = [([*r.tokens, 2], r.score), *(([*a.tokens, 2], a.score) for a in r.alternatives)]
    assert [t for t, _ in ours] == [b["tokens"] for b in case["beams"]], case["id"]
    for (_, s), b in zip(ours, case["beams"], strict=True):
        assert abs(s - b["score"]) < SCORE_TOL, (case["id"], s, b["score"])


@pytest.mark.parametrize("batch_size", [len(CASES), 5])
def test_predict_batch_of_all_cases_matches_the_reference(batch_size: int) -> None:
    """All cases in one call (images of different sizes and modes, texts of different token lengths padded
    together): every answer is the reference's single-query answer."""
    g = Grounder.from_pretrained(FIXTURE / DOC["model_dir"], batch_size=batch_size, cache_mb=0, device=DEVICE)
    results = g.predict_batch([(FIXTURE / c["image"], c["text"]) for c in CASES])
    assert len(results) == len(CASES)
    for r, case in zip(results, CASES, strict=True):
        assert r.text == case["text"]
        _check(r, case)
        assert [[*a.tokens, 2] for a in r.alternatives] == [b["tokens"] for b in case["beams"][1:]], case["id"]
