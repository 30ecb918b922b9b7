"""The confidence calibration (calibration.py): fits where the right answer is known, ECE and AUROC on hand
values, the stored record (JSON round trip, malformed grounding.json), and a Grounder that uses one."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ofa_grounding import Grounder
from ofa_grounding.calibration import (
    MIN_ANSWERS,
    AnswerModel,
    Calibration,
    answered_not_found,
    auroc,
    expected_calibration_error,
    features,
    fit,
    reliability_table,
)
from ofa_grounding.checkpoint import GROUNDING_FILE, CheckpointError, read_calibration, write_calibration
from ofa_grounding.predictor import Alternative, GroundingResult

SIZE = (200, 100)


def _result(raw: float, box=(20.0, 10.0, 120.0, 80.0), score: float | None = None, alternatives=(),
            text: str = "the thing") -> GroundingResult:
    score = math.log(raw) * 4 / 5 if score is None else score
    return GroundingResult(text, box, score, raw, (0, 0, 0, 0), SIZE, tuple(alternatives))


def _known_logistic(n: int, seed: int) -> tuple[list[GroundingResult], list[bool], list[float]]:
    """Box answers whose rightness is drawn from sigmoid(1.5 + 2 * (log raw confidence + 3.5) / 0.3)."""
    rng = random.Random(seed)
    results, labels, truth = [], [], []
    for _ in range(n):
        log_raw = rng.gauss(-3.5, 0.3)
        p = 1 / (1 + math.exp(-(1.5 + 2 * (log_raw + 3.5) / 0.3)))
        x0, y0 = rng.uniform(0, 90), rng.uniform(0, 40)
        results.append(_result(math.exp(log_raw), (x0, y0, x0 + rng.uniform(20, 100), y0 + rng.uniform(20, 50)),
                               score=rng.gauss(-2.8, 0.1)))  # score: noise, unrelated to rightness
        labels.append(rng.random() < p)
        truth.append(p)
    return results, labels, truth


def test_fit_recovers_a_known_logistic_model() -> None:
    results, labels, _ = _known_logistic(4000, seed=1)
    calibration = fit(results, labels)
    assert calibration.box.constant is None and calibration.box.answers == 4000
    test, test_labels, truth = _known_logistic(2000, seed=2)
    probs = np.array([calibration.apply(r) for r in test])
    assert np.mean(np.abs(probs - np.array(truth))) < 0.02
    assert expected_calibration_error(probs, test_labels) < 0.03
    weights = dict(zip(calibration.box.features, calibration.box.weights))
    assert weights["log_raw_confidence"] > 1.5 and abs(weights["score"]) < 0.15  # the noise feature stays small
    # no "not found" answers at all: a constant, saying why
    assert calibration.not_found.constant == 0.5 and "only 0" in calibration.not_found.reason


def test_too_few_answers_of_a_kind_fall_back_to_a_smoothed_constant() -> None:
    null = (0.0, 0.0, 0.5, 0.4)  # within 2.5 % of the sides: the null box
    results = [_result(0.05, null) for _ in range(MIN_ANSWERS - 1)] + [_result(0.03) for _ in range(30)]
    labels = [True] * (MIN_ANSWERS - 1) + [True] * 30
    calibration = fit(results, labels)
    assert calibration.not_found.constant == pytest.approx(MIN_ANSWERS / (MIN_ANSWERS + 1))
    assert f"only {MIN_ANSWERS - 1}" in calibration.not_found.reason
    assert calibration.box.constant == pytest.approx(31 / 32) and "none wrong" in calibration.box.reason
    record = calibration.to_json()
    assert record["not_found"]["kind"] == "constant" and record["not_found"]["answers"] == MIN_ANSWERS - 1
    assert calibration.apply(_result(0.05, null)) == calibration.not_found.constant


def test_ece_and_auroc_on_known_values() -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform(size=20000)
    assert expected_calibration_error(p, rng.uniform(size=p.size) < p) < 0.02  # calibrated by construction
    half = [True, False] * 500
    assert expected_calibration_error([0.9] * 1000, half) == pytest.approx(0.4)
    assert expected_calibration_error([1.0, 0.0], [True, False]) == 0.0  # 1.0 falls in the last bin
    assert auroc([3, 4], [1, 2]) == 1.0 and auroc([1], [2]) == 0.0 and auroc([1, 2], [1, 2]) == 0.5
    assert auroc([0.8, 0.4], [0.4, 0.1]) == 0.875  # one tie of four pairs counts half
    with pytest.raises(ValueError, match="positives and negatives"):
        auroc([1.0], [])
    table = reliability_table([0.05, 0.95, 0.97], [False, True, False])
    assert len(table) == 10 and table[0]["count"] == 1 and table[9]["right"] == 0.5 and table[5]["count"] == 0


def test_features_read_the_beams() -> None:
    alt_same = Alternative((20.0, 10.0, 120.0, 80.0), -3.0, 0.03, (0, 0, 0, 0))
    alt_null = Alternative((0.0, 0.0, 1.0, 1.0), -3.0, 0.03, (0, 0, 0, 0))
    f = features(_result(0.03, score=-3.0, alternatives=[alt_same, alt_null]))
    assert f["agreement"] == pytest.approx(2 / 3) and f["not_found_share"] == pytest.approx(1 / 3)
    assert f["log_area_share"] == pytest.approx(math.log(100 * 70 / (200 * 100)))
    assert f["log_raw_confidence"] == pytest.approx(math.log(0.03))
    null = _result(0.06, (0.0, 0.0, 0.6, 0.5), score=-3.0, alternatives=[alt_same, alt_null])
    assert answered_not_found(null) and features(null)["agreement"] == pytest.approx(2 / 3)
    assert answered_not_found(_result(0.03, text="  ")) and not answered_not_found(_result(0.03))


def test_zoomed_is_a_feature_and_old_records_still_apply() -> None:
    assert features(_result(0.03))["zoomed"] == 0.0
    assert features(dataclasses.replace(_result(0.03), zoomed=True))["zoomed"] == 1.0
    # Zoomed boxes right 90 % of the time, first looks 30 %, at the same raw confidence: only the flag tells.
    rng = random.Random(5)
    results, labels = [], []
    for i in range(600):
        zoomed = i % 2 == 0
        results.append(dataclasses.replace(_result(math.exp(rng.gauss(-3.5, 0.3))), zoomed=zoomed))
        labels.append(rng.random() < (0.9 if zoomed else 0.3))
    calibration = fit(results, labels)
    assert "zoomed" in calibration.box.features
    assert calibration.apply(results[0]) > 0.8 and calibration.apply(results[1]) < 0.4
    old = Calibration.from_json(_logistic_record())  # a record fitted before "zoomed" existed
    assert old.apply(dataclasses.replace(_result(0.03), zoomed=True)) == old.apply(_result(0.03))


def test_json_round_trip() -> None:
    results, labels, _ = _known_logistic(300, seed=3)
    calibration = fit(results, labels, info={"fitted": {"data": "x"}})
    record = json.loads(json.dumps(calibration.to_json()))
    again = Calibration.from_json(record)
    assert again.to_json() == record and again.info == {"fitted": {"data": "x"}}
    assert [again.apply(r) for r in results[:20]] == [calibration.apply(r) for r in results[:20]]


def _logistic_record(**box) -> dict:
    model = {"kind": "logistic", "features": ["log_raw_confidence"], "means": [-3.5], "scales": [0.1],
             "weights": [1.0], "bias": 2.0, **box}
    return {"format": 1, "box": model, "not_found": {"kind": "constant", "probability": 0.9, "reason": "few"}}


@pytest.mark.parametrize(("change", "message"), [
    ({"kind": "tree"}, 'calibration.box.kind must be "logistic" or "constant"'),
    ({"weights": [1.0, 2.0]}, "calibration.box.weights must be 1 finite numbers"),
    ({"means": ["a"]}, "calibration.box.means must be 1 finite numbers"),
    ({"features": ["colour"]}, "calibration.box.features: unknown feature(s) colour"),
    ({"scales": [0.0]}, "calibration.box.scales must be positive"),
    ({"bias": None}, "calibration.box.bias must be a finite number"),
])
def test_malformed_records_are_one_line_errors_naming_the_file(tiny_model_dir: Path, tmp_path: Path, change: dict,
                                                               message: str) -> None:
    model = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model)
    (model / GROUNDING_FILE).write_text(json.dumps({"calibration": _logistic_record(**change)}))
    with pytest.raises(CheckpointError) as info:
        Grounder.from_pretrained(model)
    assert str(info.value).startswith(f"{model / GROUNDING_FILE}: {message}") and "\n" not in str(info.value)


def test_malformed_grounding_file(tmp_path: Path) -> None:
    (tmp_path / GROUNDING_FILE).write_text("{oops")
    with pytest.raises(CheckpointError, match="unreadable JSON"):
        read_calibration(tmp_path)
    (tmp_path / GROUNDING_FILE).write_text(json.dumps({"calibration": {"format": 2}}))
    with pytest.raises(CheckpointError, match=r"grounding.json: calibration.format must be 1, got 2"):
        read_calibration(tmp_path)
    (tmp_path / GROUNDING_FILE).write_text(json.dumps({"calibration": [1]}))
    with pytest.raises(CheckpointError, match="calibration must be a JSON object"):
        read_calibration(tmp_path)
    record = _logistic_record()
    record["not_found"] = {"kind": "constant", "probability": 1.5}
    (tmp_path / GROUNDING_FILE).write_text(json.dumps({"calibration": record}))
    with pytest.raises(CheckpointError, match=r"calibration.not_found.probability must be a number in \[0, 1\]"):
        read_calibration(tmp_path)


def test_write_keeps_the_other_keys(tmp_path: Path) -> None:
    (tmp_path / GROUNDING_FILE).write_text(json.dumps({"min_confidence": 0.2, "how": "by hand"}))
    calibration = Calibration.from_json(_logistic_record())
    write_calibration(tmp_path, calibration)
    stored = json.loads((tmp_path / GROUNDING_FILE).read_text())
    assert stored["min_confidence"] == 0.2 and stored["how"] == "by hand"
    assert read_calibration(tmp_path).to_json() == calibration.to_json()
    assert read_calibration(tmp_path / "elsewhere") is None


def test_grounder_with_a_calibration(tiny_model_dir: Path, tmp_path: Path) -> None:
    image = tmp_path / "a.png"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(image)
    texts = ["the red square", "the blue one", ""]
    plain = Grounder.from_pretrained(tiny_model_dir).predict(image, texts)
    raw = plain[0].confidence
    record = _logistic_record(means=[math.log(raw)], scales=[1.0], weights=[1.0], bias=0.5)
    calibration = Calibration.from_json(record)
    calibrated = Grounder.from_pretrained(tiny_model_dir, calibration=calibration).predict(image, texts)
    for p, c in zip(plain, calibrated):
        assert not p.calibrated and p.raw_confidence == p.confidence
        assert c.calibrated and 0 <= c.confidence <= 1 and c.confidence != c.raw_confidence
        assert (c.box, c.tokens, c.score, c.raw_confidence) == (p.box, p.tokens, p.score, p.confidence)
        assert c.alternatives == p.alternatives  # raw confidences
    assert calibrated[0].confidence == pytest.approx(1 / (1 + math.exp(-0.5)))
    assert calibrated[2].confidence == 0.9 and not calibrated[2].found  # empty description: the "not found" model
    d = calibrated[0].to_dict(alternatives=True)
    assert list(d) == ["text", "box", "score", "confidence", "found", "tokens", "alternatives", "raw_confidence",
                       "calibrated", "zoomed"]
    assert d["calibrated"] is True and d["raw_confidence"] == raw
    assert calibrated[0].confidence_label() == "62 % sure" and plain[0].confidence_label() == f"raw {raw:.3f}"
    # the model folder's calibration is used unless calibration=None; min_confidence is then a probability
    model = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model)
    (model / GROUNDING_FILE).write_text(json.dumps({"calibration": record, "min_confidence": 0.7}))
    g = Grounder.from_pretrained(model)
    r = g.predict(image, texts[0])
    assert r.calibrated and r.confidence == pytest.approx(0.6225, abs=1e-4) and not r.found  # 0.62 < 0.7
    assert g({"image": str(image), "text": texts[0]})["scores"] == [r.confidence]
    assert Grounder.from_pretrained(model, min_confidence=0.6).predict(image, texts[0]).found
    assert not Grounder.from_pretrained(model, calibration=None).predict(image, texts[0]).calibrated


def test_answer_model_probability_is_stable_at_the_ends() -> None:
    model = AnswerModel(("score",), (0.0,), (1.0,), (1.0,), 0.0)
    assert model.probability({"score": 1000.0}) == 1.0 and model.probability({"score": -1000.0}) == 0.0
    assert model.probability({"score": float("nan")}) == 0.5  # a non-finite feature counts as its mean


def test_non_finite_features_count_as_the_mean() -> None:
    results, labels, _ = _known_logistic(200, seed=4)
    results[0] = _result(results[0].raw_confidence, results[0].box, score=float("-inf"))
    calibration = fit(results, labels)
    assert all(math.isfinite(v) for v in (*calibration.box.means, *calibration.box.weights, calibration.box.bias))
    assert 0 < calibration.apply(results[0]) < 1
