"""Draw grounding results onto an image (PIL only): coloured boxes, each labelled with its text and confidence."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

from .predictor import GroundingResult

__all__ = ["PALETTE", "draw_results"]

# Distinct, colour-blind-friendly colours (Okabe-Ito), shared with the web page.
PALETTE = ("#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#000000")


def draw_results(image: Image.Image, results: Sequence[GroundingResult]) -> Image.Image:
    """A copy of `image` (RGB) with one box per result, in result order, labelled "text (93 % sure)" with a
    calibrated confidence, "text (raw 0.031)" without (`GroundingResult.confidence_label`), and "not found, "
    before it for an answer that is not found.

    Boxes are drawn as the model gives them, sorted into (left, top, right, bottom) and clipped to the
    image; lines scale with the image size so they stay visible on large photos.
    """
    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    width = max(2, round(max(out.size) / 300))
    font = ImageFont.load_default(size=max(12, round(max(out.size) / 45)))
    for i, r in enumerate(results):
        colour = PALETTE[i % len(PALETTE)]
        x0, x1 = sorted((r.box[0], r.box[2]))
        y0, y1 = sorted((r.box[1], r.box[3]))
        x0, y0 = max(0.0, x0), max(0.0, y0)
        x1, y1 = min(out.width - 1.0, x1), min(out.height - 1.0, y1)
        draw.rectangle((x0, y0, max(x0, x1), max(y0, y1)), outline=colour, width=width)
        label = f"{r.text} ({'' if r.found else 'not found, '}{r.confidence_label()})"
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        th, tw = bottom - top + 4, right - left + 6
        ty = y0 - th if y0 - th >= 0 else min(y0 + width, out.height - th)
        draw.rectangle((x0, ty, x0 + tw, ty + th), fill=colour)
        draw.text((x0 + 3, ty + 2 - top), label, fill="black" if colour in ("#F0E442", "#E69F00", "#56B4E9")
                  else "white", font=font)
    return out
