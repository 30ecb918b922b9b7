"""Box metrics as OFA computes them, and accuracy summaries with breakdowns. Pure functions."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

__all__ = ["box_iou", "box_overlap", "is_hit", "summarize", "breakdown", "size_bucket", "length_bucket"]

Box = Sequence[float]


def _intersection(pred: Box, gt: Box) -> tuple[float, float]:
    return min(pred[2], gt[2]) - max(pred[0], gt[0]), min(pred[3], gt[3]) - max(pred[1], gt[1])


def box_iou(pred: Box, gt: Box) -> float:
    """IoU of two x0,y0,x1,y1 boxes as OFA scores it: inter / (area_pred + area_gt - inter + 1e-6).

    A predicted box with x1 < x0 (or y1 < y0) has no area; its IoU is 0.
    """
    iw, ih = _intersection(pred, gt)
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    area_pred = max(pred[2] - pred[0], 0.0) * max(pred[3] - pred[1], 0.0)
    area_gt = (gt[2] - gt[0]) * (gt[3] - gt[1])
    return inter / (area_pred + area_gt - inter + 1e-6)


def box_overlap(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two boxes with their corners put in order first, for comparing two answers with each other
    (random-weight models often emit x1 < x0, which `box_iou` scores as no box at all); identical boxes
    count 1 even with zero area."""
    if all(abs(x - y) < 1e-3 for x, y in zip(a, b)):
        return 1.0

    def ordered(z: Sequence[float]) -> Box:
        return min(z[0], z[2]), min(z[1], z[3]), max(z[0], z[2]), max(z[1], z[3])

    return box_iou(ordered(a), ordered(b))


def is_hit(pred: Box, gt: Box, threshold: float = 0.5) -> bool:
    """OFA's rule: IoU >= threshold and a non-empty intersection."""
    iw, ih = _intersection(pred, gt)
    return iw > 0 and ih > 0 and box_iou(pred, gt) >= threshold


def size_bucket(box: Box) -> str:
    """COCO's object sizes by ground-truth area: small < 32^2 <= medium < 96^2 <= large (pixels)."""
    area = (box[2] - box[0]) * (box[3] - box[1])
    return "small" if area < 32 ** 2 else "medium" if area < 96 ** 2 else "large"


def length_bucket(text: str) -> str:
    n = len(text.split())
    return "1-2 words" if n <= 2 else "3-5 words" if n <= 5 else "6-9 words" if n <= 9 else "10+ words"


def summarize(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Count, Acc@0.5, Acc@0.75 (as fractions) and mean IoU over records with "box" and "gt_box"; an answer
    "not found" (`"found": false`) to a present object is a miss with IoU 0. Records of absent objects
    (`"gt_box": None`) are left out of those and summarised apart, when there are any, as
    `"absent": {"count", "not_found"}` (the share of them answered "not found", the right answer)."""
    n = hits50 = hits75 = absent = not_found = 0
    iou_sum = 0.0
    for r in records:
        found = r.get("found", True)
        if r["gt_box"] is None:
            absent += 1
            not_found += not found
            continue
        n += 1
        if found:
            hits50 += is_hit(r["box"], r["gt_box"], 0.5)
            hits75 += is_hit(r["box"], r["gt_box"], 0.75)
            iou_sum += box_iou(r["box"], r["gt_box"])
    out: dict[str, Any] = {"count": n, "acc50": hits50 / n if n else 0.0, "acc75": hits75 / n if n else 0.0,
                           "miou": iou_sum / n if n else 0.0}
    if absent:
        out["absent"] = {"count": absent, "not_found": not_found / absent}
    return out


SIZE_ORDER = ("small", "medium", "large")
LENGTH_ORDER = ("1-2 words", "3-5 words", "6-9 words", "10+ words")


def breakdown(records: Sequence[dict[str, Any]], key: Callable[[dict[str, Any]], str | None],
              order: Sequence[str] = ()) -> dict[str, dict]:
    """`summarize` per group, groups in `order` first, then alphabetically; records keyed None are left out."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        k = key(r)
        if k is not None:
            groups.setdefault(k, []).append(r)
    rank = {name: i for i, name in enumerate(order)}
    return {k: summarize(groups[k]) for k in sorted(groups, key=lambda k: (rank.get(k, len(rank)), k))}
