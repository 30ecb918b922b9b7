"""`Zoom`: a second look at small answers, as a model directory's grounding.json may ask for it (the
`Grounder` does the looking)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

__all__ = ["Zoom"]


@dataclass(frozen=True)
class Zoom:
    """A second look at small answers: when an answer's box is at most `max_share` of the image's width and
    height, the model looks again at a square crop around it (`factor` times the box's longer side, at least
    `min_side` pixels, within the image) with the same description, and the box found there replaces the
    first one if the two overlap by at least `min_iou` (a second look tightens a box; it does not move the
    answer to another object). At a model's small input side a 20-40 px object of a large image is a few
    pixels across; in the crop it is a quarter of the model's view. A model directory turns it on in its
    grounding.json ("zoom"); without it, a Grounder answers as the reference does."""

    max_share: float = 0.15
    factor: float = 4.0
    min_side: int = 64
    min_iou: float = 0.3

    def __post_init__(self) -> None:
        if not (0 < self.max_share <= 1 and self.factor >= 1 and self.min_side >= 16 and 0 <= self.min_iou <= 1):
            raise ValueError(f"zoom needs 0 < max_share <= 1, factor >= 1, min_side >= 16 and 0 <= min_iou <= 1, "
                             f"got {self}")

    def window(self, box: Sequence[float], size_wh: tuple[int, int]) -> tuple[int, int, int, int] | None:
        """The crop (left, top, right, bottom) for a second look at `box` in an image of `size_wh`, or None
        when the box is not small (or has no area)."""
        (w, h), (x0, y0, x1, y1) = size_wh, box
        bw, bh = x1 - x0, y1 - y0
        if bw <= 0 or bh <= 0 or bw > self.max_share * w or bh > self.max_share * h:
            return None
        side = round(min(max(self.factor * max(bw, bh), self.min_side), w, h))
        left = round(min(max((x0 + x1 - side) / 2, 0), w - side))
        top = round(min(max((y0 + y1 - side) / 2, 0), h - side))
        return left, top, left + side, top + side

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, record: Any) -> Zoom:
        if not isinstance(record, dict) or set(record) - {f.name for f in fields(cls)}:
            raise ValueError(f"zoom must be an object with keys among max_share, factor, min_side, min_iou, "
                             f"got {record!r}")
        return cls(**record)
