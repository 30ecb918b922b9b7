from __future__ import annotations

import pytest

from ofa_grounding.metrics import box_iou, breakdown, is_hit, length_bucket, size_bucket, summarize


def test_iou_known_values() -> None:
    assert box_iou([0, 0, 10, 10], [0, 0, 10, 10]) == pytest.approx(1.0, abs=1e-8)
    assert box_iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150, abs=1e-8)
    assert box_iou([0, 0, 10, 10], [10, 0, 20, 10]) == 0.0  # touching edges do not intersect
    assert box_iou([10, 10, 0, 0], [0, 0, 10, 10]) == 0.0  # an inverted prediction has no area


def test_hit_rule() -> None:
    gt = [0, 0, 10, 10]
    assert not is_hit([0, 0, 10, 20], gt)  # IoU 100 / (200 + 1e-6): OFA's epsilon makes exactly half a miss
    assert is_hit([0, 0, 10, 19.9], gt)
    assert is_hit([0, 0, 10, 13], gt, 0.75) and not is_hit([0, 0, 10, 14], gt, 0.75)


def test_summary_and_breakdowns() -> None:
    records = [{"box": [0, 0, 10, 10], "gt_box": [0, 0, 10, 10], "text": "a b"},
               {"box": [0, 0, 10, 10], "gt_box": [50, 50, 200, 200], "text": "one two three four"}]
    s = summarize(records)
    assert s["count"] == 2 and s["acc50"] == 0.5 and s["acc75"] == 0.5 and s["miou"] == pytest.approx(0.5)
    assert summarize([]) == {"count": 0, "acc50": 0.0, "acc75": 0.0, "miou": 0.0}
    by_size = breakdown(records, lambda r: size_bucket(r["gt_box"]))
    assert list(by_size) == ["large", "small"] and by_size["small"]["acc50"] == 1.0
    assert list(breakdown(records, lambda r: size_bucket(r["gt_box"]), ("small", "medium", "large"))) == [
        "small", "large"]
    assert length_bucket("a b") == "1-2 words" and length_bucket("one two three four") == "3-5 words"
    assert size_bucket([0, 0, 31, 33]) == "small" and size_bucket([0, 0, 96, 96]) == "large"
