"""The wide synthetic world (`make-synthetic --world v2`): the pictures people draw, not one renderer's.

Where v1 (`synthetic.py`, kept byte for byte so that recorded numbers stay checkable) draws 256 x 256 light
scenes of upright shapes described one way, v2 varies everything a user's drawing may vary:
- canvases 160-1600 px on the long side (log-uniform), aspect ratios 1:3 to 3:1;
- backgrounds light, dark, gradient, textured or noisy, with clutter;
- 10 shapes at any rotation (a square at 45 degrees is still a square; a diamond is a rhombus, never a
  square; triangles point any way), filled, striped, dotted or outlined, anti-aliased or not;
- 12 colours with jitter; objects from ~25 px to half the canvas, in two size classes per scene, touching
  and partly overlapping; JPEG or PNG files;
- phrasings with synonyms (big/large, little/small, biggest/largest, box, ball, oval, ...), word orders
  ("the circle that is red", "red circle"), carrier phrases and questions ("where is the red circle?"),
  relations, ordinals (up to the fourth, "the middle one") and superlatives;
- descriptions of absent objects (kind "absent", `"box": null`), some with words no scene ever shows
  ("the gold circle", "the red heart").
Every present-object description is resolved against the scene (`synthetic.resolve`) to pick out exactly
one object. Scene i depends only on (seed, i).
"""

from __future__ import annotations

import io
import math
import random
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from .synthetic import SceneObject, candidate_expressions, simple_expressions

__all__ = ["COLORS", "SHAPES", "VOCABULARY", "absent_description", "make_scene", "render_text", "scene_samples"]

COLORS = {"red": (215, 45, 40), "green": (45, 160, 70), "blue": (40, 80, 210), "yellow": (235, 200, 35),
          "purple": (135, 60, 175), "orange": (240, 130, 30), "black": (20, 20, 22), "white": (246, 246, 244),
          "grey": (128, 128, 130), "pink": (245, 135, 190), "brown": (125, 78, 40), "cyan": (40, 200, 225)}
SHAPES = ("circle", "square", "triangle", "star", "diamond", "hexagon", "ellipse", "rectangle", "pentagon", "cross")
# Words a description may use for each value (the first is the canonical one, as stored in the rows).
COLOR_WORDS = {c: (c,) for c in COLORS} | {"grey": ("grey", "gray")}
SHAPE_WORDS = {"circle": ("circle", "ball", "disc", "round shape", "dot"), "square": ("square", "box"),
               "triangle": ("triangle",), "star": ("star",), "diamond": ("diamond", "rhombus"),
               "hexagon": ("hexagon",), "ellipse": ("ellipse", "oval"), "rectangle": ("rectangle", "oblong"),
               "pentagon": ("pentagon",), "cross": ("cross", "plus sign", "plus")}
SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
SUPERLATIVE_WORDS = {"largest": ("largest", "biggest"), "smallest": ("smallest", "tiniest")}
GENERIC_NOUNS = ("shape", "one", "object", "thing")
RELATION_WORDS = {"left of": ("left of", "to the left of", "on the left of"),
                  "right of": ("right of", "to the right of", "on the right of"),
                  "above": ("above", "over"), "below": ("below", "under", "beneath")}
ORDINAL_WORDS = ("first", "second", "third", "fourth")
EXTREME_WORDS = {"left": ("leftmost", "left-most"), "right": ("rightmost", "right-most"),
                 "top": ("topmost", "top"), "bottom": ("bottommost", "bottom")}
CARRIERS = ("find {}", "where is {}?", "show me {}", "point to {}", "locate {}", "select {}", "{} please",
            "which one is {}?", "can you find {}?", "I mean {}", "look for {}")
# Absent objects may be named with words no scene shows; a colour word only where no object of that shape
# has a colour it could be taken for.
UNKNOWN_COLORS = {"gold": ("yellow", "orange"), "silver": ("grey", "white"), "violet": ("purple", "pink", "blue"),
                  "magenta": ("pink", "purple", "red"), "beige": ("white", "brown", "yellow", "orange"),
                  "navy": ("blue",), "teal": ("cyan", "green", "blue"), "lime": ("green", "yellow"),
                  "maroon": ("red", "brown"), "turquoise": ("cyan", "green", "blue")}
UNKNOWN_SHAPES = ("heart", "arrow", "moon", "ring", "car", "dog", "house", "tree", "person", "cup", "letter A",
                  "octagon", "spiral", "cloud")
VOCABULARY = {"colours": COLOR_WORDS, "shapes": SHAPE_WORDS, "sizes": SIZE_WORDS, "superlatives": SUPERLATIVE_WORDS,
              "relations": RELATION_WORDS, "ordinals": (*ORDINAL_WORDS, "middle"), "extremes": EXTREME_WORDS,
              "generic nouns": GENERIC_NOUNS, "carriers": CARRIERS}
FILLS = ("solid", "solid", "solid", "striped", "dotted", "outline")
BACKGROUNDS = ("light", "dark", "gradient", "textured", "noisy")


# --------------------------------------------------------------------------------------------------
# Drawing


def _outline(shape: str, aspect: float) -> list[tuple[float, float]]:
    """The shape's outline around (0, 0), upright, in a box of about 1 x 1 (`aspect`: width / height of the
    elongated shapes: ellipse, rectangle, diamond)."""
    def ring(n: int, start: float = -math.pi / 2, rx: float = 0.5, ry: float = 0.5) -> list[tuple[float, float]]:
        angles = [start + 2 * math.pi * k / n for k in range(n)]
        return [(rx * math.cos(a), ry * math.sin(a)) for a in angles]

    if shape == "circle":
        return ring(72)
    if shape == "ellipse":
        return ring(72, rx=0.5, ry=0.5 / aspect)
    if shape == "square":
        return [(-0.5, -0.5), (0.5, -0.5), (0.5, 0.5), (-0.5, 0.5)]
    if shape == "rectangle":
        h = 0.5 / aspect
        return [(-0.5, -h), (0.5, -h), (0.5, h), (-0.5, h)]
    if shape == "diamond":  # a rhombus whose diagonals differ: never a square
        return [(0, -0.5), (0.5 / aspect, 0), (0, 0.5), (-0.5 / aspect, 0)]
    if shape == "triangle":
        return [(0.0, -0.5), (0.5, 0.43), (-0.5, 0.43)]
    if shape == "pentagon":
        return ring(5)
    if shape == "hexagon":
        return ring(6, start=0.0)
    if shape == "star":
        return [((0.5 if k % 2 == 0 else 0.2) * math.cos(-math.pi / 2 + math.pi / 5 * k),
                 (0.5 if k % 2 == 0 else 0.2) * math.sin(-math.pi / 2 + math.pi / 5 * k)) for k in range(10)]
    if shape == "cross":
        a = 0.17
        return [(-a, -0.5), (a, -0.5), (a, -a), (0.5, -a), (0.5, a), (a, a), (a, 0.5), (-a, 0.5), (-a, a),
                (-0.5, a), (-0.5, -a), (-a, -a)]
    raise ValueError(f"unknown shape {shape!r}")


def _placed(shape: str, aspect: float, side: float, angle: float, cx: float, cy: float) -> list[tuple[float, float]]:
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + side * (x * c - y * s), cy + side * (x * s + y * c)) for x, y in _outline(shape, aspect)]


def _jitter(rgb: Sequence[int], rng: random.Random, amount: int) -> tuple[int, int, int]:
    gain = rng.uniform(0.88, 1.1)
    return tuple(max(0, min(255, round(v * gain) + rng.randint(-amount, amount))) for v in rgb)  # type: ignore[return-value]


def _background(size: tuple[int, int], kind: str, rng: random.Random, nprng: np.random.Generator) -> Image.Image:
    w, h = size
    light = [rng.randint(175, 250) for _ in range(3)]
    dark = [rng.randint(8, 75) for _ in range(3)]
    base = dark if kind == "dark" or (kind in ("gradient", "textured", "noisy") and rng.random() < 0.4) else light
    if kind == "gradient":
        other = [max(0, min(255, v + rng.randint(-70, 70))) for v in base]
        angle = rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        t = (xx * math.cos(angle) + yy * math.sin(angle))
        t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
        pixels = np.asarray(base, np.float32) * (1 - t[..., None]) + np.asarray(other, np.float32) * t[..., None]
    else:
        pixels = np.empty((h, w, 3), np.float32)
        pixels[:] = base
    if kind == "noisy":
        pixels += nprng.normal(0, rng.uniform(6, 22), pixels.shape).astype(np.float32)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    unit = max(w, h) / 256
    if kind == "textured":  # a low-contrast pattern: stripes, checks or blobs
        tone = tuple(max(0, min(255, v + rng.choice((-1, 1)) * rng.randint(12, 30))) for v in base)
        step = max(4, round(rng.uniform(6, 20) * unit))
        pattern = rng.choice(("stripes", "checks", "blobs"))
        if pattern == "stripes":
            for x in range(-h, w, step * 2):
                draw.line([(x, h), (x + h, 0)], fill=tone, width=max(1, step // 2))
        elif pattern == "checks":
            for y in range(0, h, step):
                for x in range((y // step % 2) * step, w, 2 * step):
                    draw.rectangle([x, y, x + step - 1, y + step - 1], fill=tone)
        else:
            for _ in range(rng.randint(20, 60)):
                x, y, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(3, 25) * unit
                draw.ellipse([x - r, y - r, x + r, y + r], fill=tone)
    for _ in range(rng.randint(5, 35)):  # clutter: thin strokes and specks in muted tones
        tone = tuple(max(0, min(255, v + rng.randint(-50, 50))) for v in base)
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        if rng.random() < 0.6:
            d = 40 * unit
            draw.line([(x, y), (x + rng.uniform(-d, d), y + rng.uniform(-d, d))], fill=tone,
                      width=max(1, round(rng.uniform(1, 2) * unit)))
        else:
            r = rng.uniform(1, 3) * unit
            draw.ellipse([x - r, y - r, x + r, y + r], fill=tone)
    return image


def _draw(image: Image.Image, points: list[tuple[float, float]], rgb: tuple[int, int, int], fill: str,
          side: float, rng: random.Random) -> None:
    """Paint one object through an (optionally anti-aliased) mask drawn in its own patch only."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, y0 = math.floor(min(xs)) - 1, math.floor(min(ys)) - 1
    pw, ph = math.ceil(max(xs)) + 2 - x0, math.ceil(max(ys)) + 2 - y0
    ss = 4 if rng.random() < 0.7 else 1  # supersampled (anti-aliased) or hard edges
    mask = Image.new("L", (pw * ss, ph * ss), 0)
    local = [((x - x0) * ss, (y - y0) * ss) for x, y in points]
    mdraw = ImageDraw.Draw(mask)
    mdraw.polygon(local, fill=255)
    if fill == "outline":  # a stroke inside the outline: the object's box stays the outline's
        width = max(2, round(side * rng.uniform(0.08, 0.16))) * ss
        stroke = Image.new("L", mask.size, 0)
        ImageDraw.Draw(stroke).line(local + local[:2], fill=255, width=2 * width, joint="curve")
        mask = ImageChops.multiply(mask, stroke)
    if ss > 1:
        mask = mask.resize((pw, ph), Image.Resampling.BOX)
    patch = Image.new("RGB", (pw, ph), rgb)
    if fill in ("striped", "dotted"):
        other = tuple(int(v * 0.6) for v in rgb) if sum(rgb) > 150 else tuple(min(255, v + 70) for v in rgb)
        tdraw = ImageDraw.Draw(patch)
        step = max(4, round(side / rng.uniform(5, 8)))
        if fill == "striped":
            for x in range(-ph, pw, step):
                tdraw.line([(x, ph), (x + ph, 0)], fill=other, width=max(1, step // 3))
        else:
            for y in range(step // 2, ph, step):
                for x in range(step // 2 + (y // step % 2) * step // 2, pw, step):
                    r = max(1, step // 5)
                    tdraw.ellipse([x - r, y - r, x + r, y + r], fill=other)
    image.paste(patch, (x0, y0), mask)


def _contrasting(colors: Sequence[str], background: Image.Image) -> list[str]:
    """Colours that stand out from the background (an RGB distance of at least 90 from its mean)."""
    mean = np.asarray(background.resize((16, 16)), np.float32).reshape(-1, 3).mean(0)
    return [c for c in colors if float(np.linalg.norm(np.asarray(COLORS[c], np.float32) - mean)) >= 90]


def _canvas(rng: random.Random, max_side: int) -> tuple[int, int]:
    """Width and height, each 160-`max_side` px, aspect ratio 1:3 to 3:1 (a third at common ratios)."""
    aspect = math.exp(rng.uniform(math.log(1 / 3), math.log(3)))
    if rng.random() < 0.3:  # the ratios screens and cameras have
        aspect = rng.choice((1.0, 4 / 3, 3 / 4, 16 / 9, 9 / 16, 3 / 2, 2 / 3))
    stretch = max(aspect, 1 / aspect)
    low, high = math.log(160 * stretch), math.log(max(160 * stretch, max_side))
    long_side = math.exp(rng.uniform(low, high))
    w, h = (long_side, long_side / aspect) if aspect >= 1 else (long_side * aspect, long_side)
    return max(160, round(w)), max(160, round(h))


def make_scene(rng: random.Random, max_side: int = 1600,
               corner_squares: float = 0.0) -> tuple[Image.Image, list[SceneObject], dict[str, Any]]:
    """One scene: 1-9 objects of 1-4 shapes and 1-4 colours; returns the image, its objects and how it was
    drawn (background kind, file format).

    `corner_squares` (training data; 0 leaves the world as it is): the share of scenes that hold both squares
    and diamonds, every square standing on a corner (45 degrees, +-6) and every diamond upright (+-6): the
    two look most alike there, and uniform angles make such scenes rare (a square on a corner was read as a
    diamond)."""
    size = _canvas(rng, max_side)
    w, h = size
    nprng = np.random.default_rng(rng.getrandbits(64))
    kind = rng.choice(BACKGROUNDS)
    image = _background(size, kind, rng, nprng)
    palette = _contrasting(sorted(COLORS), image) or ["red", "blue"]
    shapes = rng.sample(SHAPES, rng.choice((1, 2, 2, 3, 3, 3, 4)))
    contrast = corner_squares > 0 and rng.random() < corner_squares
    if contrast:
        others = [s for s in shapes if s not in ("square", "diamond")]
        shapes = ["square", "diamond", *others[: len(shapes) - 2]]
    colors = rng.sample(palette, min(len(palette), rng.choice((1, 2, 2, 3, 3, 4))))
    count = rng.choice((1, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 8, 9))
    short = min(w, h)
    # The small class's side: from ~25 px up to where the large class (1.7-2.4x) still fits in half the short side.
    top = max(26.0, short * 0.5 / 2.4)
    unit = math.exp(rng.uniform(math.log(24), math.log(top)))
    max_overlap = rng.choice((0.0, 0.1, 0.25))
    objects: list[SceneObject] = []
    drawn: list[tuple[list[tuple[float, float]], tuple[int, int, int], str, float]] = []
    extras: list[dict[str, Any]] = []
    for _ in range(300):
        if len(objects) == count:
            break
        size_class = rng.choice(("small", "large"))
        side = unit * (rng.uniform(1.0, 1.2) if size_class == "small" else rng.uniform(1.7, 2.4))
        side = min(side, short * 0.5)
        shape = rng.choice(shapes)
        aspect = rng.uniform(1.6, 2.3) if shape in ("ellipse", "rectangle", "diamond") else 1.0
        angle = rng.uniform(0, 2 * math.pi) if rng.random() < 0.6 else rng.choice((0.0, math.pi / 2, math.pi))
        if contrast and shape in ("square", "diamond"):
            angle = (math.pi / 4 if shape == "square" else 0.0) + rng.choice((0, 1, 2, 3)) * math.pi / 2 \
                + math.radians(rng.uniform(-6, 6))
        pts = _placed(shape, aspect, side, angle, 0.0, 0.0)
        bx0, by0 = min(p[0] for p in pts), min(p[1] for p in pts)
        bw, bh = max(p[0] for p in pts) - bx0, max(p[1] for p in pts) - by0
        if bw + 4 >= w or bh + 4 >= h:
            continue
        cx, cy = rng.uniform(2 - bx0, w - 2 - bx0 - bw), rng.uniform(2 - by0, h - 2 - by0 - bh)
        pts = [(x + cx, y + cy) for x, y in pts]
        box = (min(p[0] for p in pts), min(p[1] for p in pts), max(p[0] for p in pts), max(p[1] for p in pts))
        if any(_overlap(box, o.box) > max_overlap for o in objects):
            continue
        color = rng.choice(colors)
        fill = rng.choice(FILLS)
        objects.append(SceneObject(shape, color, size_class, fill, tuple(round(v, 2) for v in box)))
        drawn.append((pts, _jitter(COLORS[color], rng, 18), fill, side))
        extras.append({"angle": round(math.degrees(angle) % 360, 1), "aspect": round(aspect, 2)})
    for pts, rgb, fill, side in drawn:  # later objects may cover part of earlier ones
        _draw(image, pts, rgb, fill, side, rng)
    if rng.random() < 0.15:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0) * max(w, h) / 512))
    if rng.random() < 0.25:
        noisy = np.asarray(image, np.float32) + nprng.normal(0, rng.uniform(3, 10), (h, w, 3)).astype(np.float32)
        image = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    fmt = "jpeg" if rng.random() < 0.6 else "png"
    info = {"background": kind, "format": fmt, "quality": rng.randint(55, 95) if fmt == "jpeg" else None,
            "objects": extras}
    return image, objects, info


def _overlap(a: Sequence[float], b: Sequence[float]) -> float:
    iw, ih = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    return iw * ih / min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))


def encode_image(image: Image.Image, info: dict[str, Any]) -> tuple[bytes, str]:
    """The scene's file bytes and extension (JPEG at the scene's quality, or PNG)."""
    out = io.BytesIO()
    if info["format"] == "jpeg":
        image.save(out, format="JPEG", quality=info["quality"])
        return out.getvalue(), "jpg"
    image.save(out, format="PNG", compress_level=6)
    return out.getvalue(), "png"


# --------------------------------------------------------------------------------------------------
# Language


def _noun_phrase(desc: dict[str, str], rng: random.Random, objects: Sequence[SceneObject]) -> str:
    """The described object's noun phrase, in one of several word orders and with synonyms."""
    size = rng.choice(SIZE_WORDS[desc["size"]]) if "size" in desc else None
    color = rng.choice(COLOR_WORDS[desc["color"]]) if "color" in desc else None
    if "shape" in desc:
        words = SHAPE_WORDS[desc["shape"]]
        if desc["shape"] == "circle" and any(o.shape == "ellipse" for o in objects):
            words = ("circle", "disc")  # "round shape", "ball" and "dot" would fit an ellipse too
        noun = rng.choice(words)
    else:
        noun = rng.choice(GENERIC_NOUNS)
    if color and rng.random() < 0.15:  # "the circle that is red", "the big square which is blue"
        return " ".join(filter(None, [size, noun, rng.choice(("that is", "which is")), color]))
    return " ".join(filter(None, [size, color, noun]))


def render_text(expr: dict[str, Any], rng: random.Random, objects: Sequence[SceneObject]) -> str:
    """An expression as words, varied: synonyms, word orders, carrier phrases and questions, case."""
    kind = expr["kind"]
    noun = _noun_phrase(expr["desc"], rng, objects) if kind != "absent" else expr["words"]
    if kind == "relation":
        anchor = _noun_phrase(expr["anchor"], rng, objects)
        text = f"the {noun} {rng.choice(RELATION_WORDS[expr['relation']])} the {anchor}"
    elif kind == "ordinal":
        k, direction = expr["index"], expr["direction"]
        if expr.get("middle"):
            across = "from left to right" if direction in ("left", "right") else "from top to bottom"
            text = f"the middle {noun}" + ("" if rng.random() < 0.5 else f" {across}")
        elif k == 0 and rng.random() < 0.6:
            style = rng.random()
            if style < 0.6:
                text = f"the {rng.choice(EXTREME_WORDS[direction])} {noun}"
            elif style < 0.8:
                text = f"the {noun} on the far {direction}"
            else:
                text = f"the {noun} furthest to the {direction}" if direction in ("left", "right") else \
                    f"the {noun} at the very {direction}"
        else:
            text = f"the {ORDINAL_WORDS[k]} {noun} from the {direction}" if rng.random() < 0.8 else \
                f"the {ORDINAL_WORDS[k]} {noun} from {direction}"
    elif kind == "superlative":
        text = f"the {rng.choice(SUPERLATIVE_WORDS[expr['extreme']])} {noun}"
    else:  # attribute, simple, absent
        text = f"the {noun}"
    if rng.random() < 0.1:
        text = text.removeprefix("the ")  # "red circle"
    if rng.random() < 0.25:
        text = rng.choice(CARRIERS).format(text)
    style = rng.random()
    if style < 0.05:
        text = text.upper()
    elif style < 0.2:
        text = text[0].upper() + text[1:] + ("" if text.endswith("?") else ".")
    return text


def absent_description(objects: Sequence[SceneObject], rng: random.Random) -> dict[str, Any] | None:
    """A description of an object the scene lacks: a colour and shape it has but not together (the hard case),
    any absent combination, or one with a colour or shape word no scene shows."""
    present = {(o.color, o.shape) for o in objects}
    style = rng.random()
    if style < 0.2:
        shape = rng.choice(UNKNOWN_SHAPES)
        color = rng.choice([None, *COLORS])
        words = " ".join(filter(None, [color and rng.choice(COLOR_WORDS[color]), shape]))
        return {"kind": "absent", "words": words}
    if style < 0.35:
        shape = rng.choice(SHAPES)
        usable = [c for c, near in UNKNOWN_COLORS.items()
                  if not any(o.shape == shape and o.color in near for o in objects)]
        if usable:
            return {"kind": "absent", "words": f"{rng.choice(usable)} {rng.choice(SHAPE_WORDS[shape])}"}
    colors, shapes = sorted({o.color for o in objects}), sorted({o.shape for o in objects})
    mixed = [(c, s) for c in colors for s in shapes if (c, s) not in present]
    anywhere = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in present]
    pool = mixed if mixed and style < 0.7 else anywhere
    if not pool:
        return None
    c, s = rng.choice(pool)
    words = f"{rng.choice(COLOR_WORDS[c])} {rng.choice(SHAPE_WORDS[s])}"
    if s == "circle" and any(o.shape == "ellipse" and o.color == c for o in objects):
        words = f"{rng.choice(COLOR_WORDS[c])} circle"  # not "the red round shape" beside a red ellipse
    return {"kind": "absent", "words": words}


def scene_samples(seed: int, index: int, per_scene: int, simple: int, absent: int, split: str, max_side: int,
                  rng: random.Random, corner_squares: float = 0.0,
                  ) -> tuple[Image.Image, list[SceneObject], dict[str, Any], list[dict]]:
    """Scene `index` and its descriptions: up to `per_scene` hard ones (attribute, relation, ordinal,
    superlative; a scene of one object gets a plain one), `simple` easy ones on train scenes, `absent`
    descriptions of absent objects; `corner_squares` as in `make_scene`."""
    image, objects, info = make_scene(rng, max_side, corner_squares)
    min_gap = 0.03 * min(image.size)
    samples: list[dict] = []
    kinds_used: set[str] = set()
    for target in rng.sample(range(len(objects)), len(objects)):
        if len(samples) == per_scene:
            break
        candidates = candidate_expressions(target, objects, rng, min_gap=min_gap, ordinals=len(ORDINAL_WORDS),
                                           middle=True)
        if not candidates:
            continue
        fresh = [c for c in candidates if c["kind"] not in kinds_used] or candidates
        kind = rng.choice(sorted({c["kind"] for c in fresh}))
        expr = next(c for c in fresh if c["kind"] == kind)
        kinds_used.add(kind)
        samples.append({"kind": kind, "target": target, "expression": expr, "extra": False})
    # Scenes without a hard description (one object, or all different) get one easy benchmark row; train
    # scenes get up to `simple` more, not counted as benchmark rows.
    fallback = not samples
    easy = (simple if split == "train" else 0) + fallback
    for k, (target, expr) in enumerate(simple_expressions(objects, rng, easy)):
        samples.append({"kind": "simple", "target": target, "extra": not (fallback and k == 0), "expression": expr})
    for _ in range(absent):
        expr = absent_description(objects, rng)
        if expr:
            samples.append({"kind": "absent", "target": None, "expression": expr, "extra": False})
    for s in samples:
        s["text"] = render_text(s["expression"], rng, objects)
        s["box"] = None if s["target"] is None else list(objects[s["target"]].box)
    return image, objects, info, samples
