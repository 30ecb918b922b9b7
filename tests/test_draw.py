"""draw.py: boxes and labels for `predict --draw`; labels never cover one another (issue 28)."""

from __future__ import annotations

from itertools import combinations

from PIL import Image

from ofa_grounding.draw import PALETTE, draw_results, layout_labels
from ofa_grounding.predictor import GroundingResult


def _result(text: str, box: tuple[float, float, float, float], found: bool = True) -> GroundingResult:
    return GroundingResult(text, box, -1.0, 0.031, (0, 0, 0, 0), (640, 480), found=found)


def _disjoint(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def _rgb(colour: str) -> tuple[int, int, int]:
    return tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))


def test_not_found_labels_form_a_legend_that_nothing_covers() -> None:
    null = (0.0, 0.0, 3.0, 2.0)  # what the null box decodes to: a speck in the top-left corner
    results = [_result("the purple elephant", null, found=False), _result("the red circle", (5, 5, 200, 150)),
               _result("a unicorn", null, found=False), _result("the blue square", (5, 5, 200, 150)),
               _result("the third thing that is not in the picture at all", null, found=False),
               _result("the green triangle", (10, 8, 90, 60)), _result("the sky", (0, 0, 640, 480))]
    labels = layout_labels((640, 480), results)
    assert sorted(label.result for label in labels) == list(range(len(results)))  # one label per result
    for a, b in combinations(labels, 2):
        assert _disjoint(a.rect, b.rect), (a, b)
    for label in labels:
        left, top, right, bottom = label.rect
        assert 0 <= left < right <= 640 and 0 <= top < bottom <= 480, label
        assert label.colour == PALETTE[label.result % len(PALETTE)]
    legend = [label for label in labels if not results[label.result].found]
    assert [label.result for label in legend] == [0, 2, 4]  # in result order, stacked down the left edge
    assert all(label.rect[0] == 0 for label in legend)
    assert [label.rect[1] for label in legend] == sorted(label.rect[1] for label in legend)
    assert legend[0].rect[1] == 0 and legend[1].rect[1] == legend[0].rect[3]
    assert legend[0].text == "the purple elephant (not found, raw 0.031)"


def test_the_drawing_puts_each_label_where_the_layout_says() -> None:
    results = [_result("a", (0, 0, 1, 1), found=False), _result("b", (0, 0, 1, 1), found=False),
               _result("c", (0, 0, 1, 1), found=False), _result("d", (40, 40, 300, 200))]
    drawn = draw_results(Image.new("RGB", (640, 480), (255, 255, 255)), results)
    for label in layout_labels((640, 480), results):
        left, top, right, bottom = label.rect
        assert drawn.getpixel((left + 1, top + 1)) == _rgb(label.colour), label
        assert drawn.getpixel((right - 2, bottom - 2)) == _rgb(label.colour), label
    assert drawn.getpixel((41, 120)) == _rgb(PALETTE[3])  # the found box's left edge, half-way down


def test_more_not_found_answers_than_lines_end_with_a_count() -> None:
    results = [_result(f"thing number {i}", (0, 0, 1, 1), found=False) for i in range(40)]
    results.append(_result("a very long description " * 10, (20, 20, 100, 100)))
    labels = layout_labels((160, 120), results)
    for a, b in combinations(labels, 2):
        assert _disjoint(a.rect, b.rect), (a, b)
    assert all(0 <= label.rect[0] and label.rect[2] <= 160 for label in labels)  # long text is cut to fit
    legend = [label for label in labels if label.result is None or not results[label.result].found]
    assert legend[-1].result is None
    assert legend[-1].text == f"+ {40 - (len(legend) - 1)} more not found"
    assert legend[-1].rect[3] <= 120
    assert labels[-1].text.endswith("…")
