"""Draw grounding results onto an image (PIL only): coloured boxes, each labelled with its text and confidence."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

from .predictor import GroundingResult

__all__ = ["PALETTE", "Label", "draw_results", "layout_labels"]

# Distinct, colour-blind-friendly colours (Okabe-Ito), shared with the web page.
PALETTE = ("#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#000000")
_MORE_COLOUR = "#FFFFFF"  # the "+ N more not found" line
_DARK_TEXT = ("#F0E442", "#E69F00", "#56B4E9", _MORE_COLOUR)  # light colours: black text on them, white on the rest


@dataclass(frozen=True)
class Label:
    """One label as `draw_results` draws it: text, background colour and rectangle (left, top, right,
    bottom) in image pixels, right and bottom exclusive. `result` is the index of its result, or None for
    the "+ N more not found" line."""

    text: str
    colour: str
    rect: tuple[int, int, int, int]
    result: int | None


def _font(size_wh: tuple[int, int]) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=max(12, round(max(size_wh) / 45)))


def _line_width(size_wh: tuple[int, int]) -> int:
    return max(2, round(max(size_wh) / 300))


def _clipped_box(box: Sequence[float], size_wh: tuple[int, int]) -> tuple[float, float, float, float]:
    """(left, top, right, bottom), sorted and clipped to the image."""
    x0, x1 = sorted((box[0], box[2]))
    y0, y1 = sorted((box[1], box[3]))
    x0, y0 = min(max(0.0, x0), size_wh[0] - 1.0), min(max(0.0, y0), size_wh[1] - 1.0)
    x1, y1 = min(size_wh[0] - 1.0, x1), min(size_wh[1] - 1.0, y1)
    return x0, y0, max(x0, x1), max(y0, y1)


def _overlaps(a: Sequence[float], b: Sequence[float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _text_width(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> int:
    left, _, right, _ = font.getbbox(text)
    return right - left + 6


def _fit(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, max_width: int) -> str:
    """`text`, cut with "…" until its label is at most `max_width` wide."""
    if _text_width(text, font) <= max_width:
        return text
    while text and _text_width(text + "…", font) > max_width:
        text = text[:-1]
    return text + "…"


def layout_labels(size_wh: tuple[int, int], results: Sequence[GroundingResult]) -> list[Label]:
    """Where `draw_results` puts each label on an image of `size_wh` (width, height), without drawing.

    Not-found answers have no place in the picture, so their labels ("text (not found, raw 0.031)") form a
    legend, one per line, stacked down from the top-left corner in result order; when they outnumber the
    lines the image holds (less one line kept free per found answer), the last line says how many more
    there are. A found answer's label sits above
    its box, or else just inside its top edge, or below it, or, when all three are taken by labels placed
    before it, at the free height nearest the box's top; labels are kept inside the image (cut with "…" when
    wider than it) and never cover one another while there is room.
    """
    width, height = size_wh
    font = _font(size_wh)
    line = _line_width(size_wh)
    _, top, _, bottom = font.getbbox("Hgjy|")
    th = bottom - top + 4
    placed: list[Label] = []

    missing = [i for i, r in enumerate(results) if not r.found]
    rows = max(1, height // th - (len(results) - len(missing)))  # a line left free for each found label
    shown = missing if len(missing) <= rows else missing[:rows - 1]
    for row, i in enumerate(shown):
        r = results[i]
        text = _fit(f"{r.text} (not found, {r.confidence_label()})", font, width)
        placed.append(Label(text, PALETTE[i % len(PALETTE)], (0, row * th, _text_width(text, font), row * th + th), i))
    if len(shown) < len(missing):
        text = _fit(f"+ {len(missing) - len(shown)} more not found", font, width)
        y = len(shown) * th
        placed.append(Label(text, _MORE_COLOUR, (0, y, _text_width(text, font), y + th), None))

    for i, r in enumerate(results):
        if not r.found:
            continue
        x0, y0, _, y1 = _clipped_box(r.box, size_wh)
        text = _fit(f"{r.text} ({r.confidence_label()})", font, width)
        tw = _text_width(text, font)
        x = int(min(max(0.0, x0), max(0, width - tw)))
        preferred = [round(y0) - th, round(y0) + line, round(y1) + line]
        scan = sorted(range(0, max(1, height - th + 1), max(1, th // 4)), key=lambda y: abs(y - y0))
        fits = [y for y in preferred if 0 <= y <= height - th] + scan
        rects = [(x, y, x + tw, y + th) for y in fits]
        rect = next((c for c in rects if not any(_overlaps(c, p.rect) for p in placed)), rects[0])
        placed.append(Label(text, PALETTE[i % len(PALETTE)], rect, i))
    return placed


def _dashed_rectangle(draw: ImageDraw.ImageDraw, box: Sequence[float], colour: str, width: int) -> None:
    x0, y0, x1, y1 = box
    dash = 4 * width
    for a, b, fixed, horizontal in ((x0, x1, y0, True), (x0, x1, y1, True), (y0, y1, x0, False),
                                    (y0, y1, x1, False)):
        start = a
        while start < b:
            end = min(b, start + dash)
            if horizontal:
                draw.line((start, fixed, end, fixed), fill=colour, width=width)
            else:
                draw.line((fixed, start, fixed, end), fill=colour, width=width)
            start += 2 * dash


def draw_results(image: Image.Image, results: Sequence[GroundingResult]) -> Image.Image:
    """A copy of `image` (RGB) with one box per result, in result order, labelled "text (93 % sure)" with a
    calibrated confidence, "text (raw 0.031)" without (`GroundingResult.confidence_label`).

    Boxes are drawn as the model gives them, sorted into (left, top, right, bottom) and clipped to the
    image; lines scale with the image size so they stay visible on large photos. A not-found answer's box is
    dashed (as on the web page) and its label, "text (not found, raw 0.031)", goes to a legend in the
    top-left corner; labels are drawn last, where `layout_labels` puts them, so no label covers another.
    """
    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    width = _line_width(out.size)
    font = _font(out.size)
    for i, r in enumerate(results):
        colour = PALETTE[i % len(PALETTE)]
        box = _clipped_box(r.box, out.size)
        if r.found:
            draw.rectangle(box, outline=colour, width=width)
        else:
            _dashed_rectangle(draw, box, colour, width)
    _, top, _, _ = font.getbbox("Hgjy|")
    for label in layout_labels(out.size, results):
        left, ty, right, bottom = label.rect
        draw.rectangle((left, ty, right - 1, bottom - 1), fill=label.colour)
        draw.text((left + 3, ty + 2 - top), label.text, fill="black" if label.colour in _DARK_TEXT else "white",
                  font=font)
    return out
