"""A procedurally drawn referring-expression benchmark that anyone can regenerate in seconds.

Scenes of flat shapes (circle, square, triangle, star, diamond, hexagon) in six colours, two size
classes and three textures, on cluttered backgrounds, with partial occlusion. Each scene reuses a few
colours and shapes, so most objects share their colour or their shape with a distractor. Every
expression is built from a structured description and checked by `resolve` to pick out exactly one
object; kinds:
- attribute: "the small green square" (colour or shape alone would be ambiguous);
- relation: "the red circle left of the blue star" (the red circles are ambiguous, the anchor is not);
- ordinal: "the second triangle from the top", "the leftmost yellow diamond";
- superlative: "the largest star".
Optionally (`simple=K`, training data only) up to K extra "simple" expressions per train scene: any
attribute description that picks out one object ("the star", "the blue circle"), the easy cases the
benchmark leaves out, drawn from a separate random stream so the benchmark rows stay byte-identical.
Scenes (not expressions) are split into train/val/test. Scene i depends only on (seed, i): the same
seed gives byte-identical files, and a larger --n only adds scenes.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import multiprocessing
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from .metrics import is_hit

__all__ = ["COLORS", "SHAPES", "SceneObject", "absent_expressions", "baseline_accuracies", "make_scene", "resolve",
           "write_synthetic"]

SHAPES = ("circle", "square", "triangle", "star", "diamond", "hexagon")
COLORS = {"red": (215, 45, 40), "green": (45, 160, 70), "blue": (40, 80, 210), "yellow": (235, 200, 35),
          "purple": (135, 60, 175), "orange": (240, 130, 30)}
TEXTURES = ("solid", "striped", "dotted")
SPLITS = (("train", 0.8), ("val", 0.1), ("test", 0.1))
ORDINALS = ("first", "second", "third")
DIRECTIONS = {"left": (0, 1), "right": (0, -1), "top": (1, 1), "bottom": (1, -1)}  # axis, sign
RELATIONS = {"left of": (0, -1), "right of": (0, 1), "above": (1, -1), "below": (1, 1)}


@dataclass
class SceneObject:
    shape: str
    color: str
    size: str  # "small" or "large"
    texture: str
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels (exclusive end)

    @property
    def center(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2

    @property
    def area(self) -> float:
        return (self.box[2] - self.box[0]) * (self.box[3] - self.box[1])


# --------------------------------------------------------------------------------------------------
# Descriptions: structured, resolvable, and rendered as text


def _matches(obj: SceneObject, desc: dict[str, str]) -> bool:
    return all(getattr(obj, k) == v for k, v in desc.items())


def _noun(desc: dict[str, str]) -> str:
    words = [desc[k] for k in ("size", "color") if k in desc]
    return " ".join([*words, desc.get("shape", "shape")])


def resolve(expr: dict[str, Any], objects: Sequence[SceneObject], min_gap: float | None = None) -> list[int]:
    """Indices of the objects an expression refers to (a valid expression gives exactly one). `min_gap`:
    pixels between centres along an axis for an order or a relation to count as clear (default 8)."""
    min_gap = _MIN_GAP if min_gap is None else min_gap
    pool = [i for i, o in enumerate(objects) if _matches(o, expr["desc"])]
    kind = expr["kind"]
    if kind == "attribute":
        return pool
    if kind == "relation":
        anchors = [i for i, o in enumerate(objects) if _matches(o, expr["anchor"])]
        if len(anchors) != 1:
            return []
        anchor = objects[anchors[0]]
        return [i for i in pool if i != anchors[0] and _relation_holds(objects[i], anchor, expr["relation"], min_gap)]
    if kind == "ordinal":
        axis, sign = DIRECTIONS[expr["direction"]]
        order = sorted(pool, key=lambda i: sign * objects[i].center[axis])
        keys = [sign * objects[i].center[axis] for i in order]
        k = expr["index"]
        if k >= len(order) or any(b - a < min_gap for a, b in itertools.pairwise(keys)):
            return []  # too few, or the order along that axis is not clear
        if expr.get("middle") and len(order) != 3:
            return []  # "the middle one" of exactly three
        return [order[k]]
    if kind == "superlative":
        areas = sorted((objects[i].area, i) for i in pool)
        if len(areas) < 2:
            return []
        pick, other = (areas[-1], areas[-2]) if expr["extreme"] == "largest" else (areas[0], areas[1])
        ratio = max(pick[0], other[0]) / min(pick[0], other[0])
        return [pick[1]] if ratio >= 1.5 else []
    raise ValueError(f"unknown expression kind {kind!r}")


# Every word a v1 description uses ("the <size> <colour> <shape>", then the kind's words), for model cards.
VOCABULARY = {"colours": {c: (c,) for c in COLORS}, "shapes": {s: (s,) for s in SHAPES},
              "sizes": {"small": ("small",), "large": ("large",)},
              "superlatives": {"largest": ("largest",), "smallest": ("smallest",)},
              "relations": {r: (r, f"to the {r}") if r in ("left of", "right of") else (r,) for r in RELATIONS},
              "ordinals": ORDINALS,
              "extremes": {"left": ("leftmost",), "right": ("rightmost",), "top": ("topmost",),
                           "bottom": ("bottommost",)}}

_MIN_GAP = 8.0  # pixels between centres along an axis for an order or a relation to count as clear


def _relation_holds(obj: SceneObject, anchor: SceneObject, relation: str, min_gap: float = _MIN_GAP) -> bool:
    axis, sign = RELATIONS[relation]
    d = [obj.center[0] - anchor.center[0], obj.center[1] - anchor.center[1]]
    return sign * d[axis] > min_gap and abs(d[axis]) > abs(d[1 - axis])


def render_text(expr: dict[str, Any], rng: random.Random) -> str:
    noun = _noun(expr["desc"])
    kind = expr["kind"]
    if kind == "attribute":
        return f"the {noun}"
    if kind == "relation":
        relation = expr["relation"]
        if relation in ("left of", "right of") and rng.random() < 0.5:
            relation = "to the " + relation
        return f"the {noun} {relation} the {_noun(expr['anchor'])}"
    if kind == "ordinal":
        k, direction = expr["index"], expr["direction"]
        if k == 0 and rng.random() < 0.5:
            extreme = {"left": "leftmost", "right": "rightmost", "top": "topmost", "bottom": "bottommost"}[direction]
            return f"the {extreme} {noun}"
        return f"the {ORDINALS[k]} {noun} from the {direction}"
    return f"the {expr['extreme']} {noun}"


def candidate_expressions(target: int, objects: Sequence[SceneObject], rng: random.Random,
                          min_gap: float | None = None, ordinals: int = len(ORDINALS),
                          middle: bool = False) -> list[dict]:
    """Every hard expression that picks out `target` alone, by kind (orders up to the `ordinals`-th; with
    `middle`, also "the middle one" of three), shuffled."""
    t = objects[target]
    out: list[dict] = []
    full = {"size": t.size, "color": t.color, "shape": t.shape}
    for keys in (("color", "shape"), ("size", "shape"), ("size", "color", "shape")):
        desc = {k: full[k] for k in keys}
        single_ambiguous = all(len(resolve({"kind": "attribute", "desc": {k: full[k]}}, objects)) > 1 for k in keys)
        if single_ambiguous and resolve({"kind": "attribute", "desc": desc}, objects) == [target]:
            out.append({"kind": "attribute", "desc": desc})
            break
    for desc in ({"color": t.color, "shape": t.shape}, {"shape": t.shape}):
        if len(resolve({"kind": "attribute", "desc": desc}, objects)) < 2:
            continue  # relations, orders and superlatives only where the noun alone is ambiguous
        for j, anchor in enumerate(objects):
            if j == target:
                continue
            for anchor_desc in ({"shape": anchor.shape}, {"color": anchor.color, "shape": anchor.shape}):
                for relation in RELATIONS:
                    expr = {"kind": "relation", "desc": desc, "anchor": anchor_desc, "relation": relation}
                    if resolve(expr, objects, min_gap) == [target]:
                        out.append(expr)
        for direction in DIRECTIONS:
            for k in range(ordinals):
                expr = {"kind": "ordinal", "desc": desc, "direction": direction, "index": k}
                if resolve(expr, objects, min_gap) == [target]:
                    out.append(expr)
            if middle and direction in ("left", "top"):
                expr = {"kind": "ordinal", "desc": desc, "direction": direction, "index": 1, "middle": True}
                if resolve(expr, objects, min_gap) == [target]:
                    out.append(expr)
        for extreme in ("largest", "smallest"):
            expr = {"kind": "superlative", "desc": desc, "extreme": extreme}
            if resolve(expr, objects, min_gap) == [target]:
                out.append(expr)
    rng.shuffle(out)
    return out


def simple_expressions(objects: Sequence[SceneObject], rng: random.Random, count: int) -> list[tuple[int, dict]]:
    """Up to `count` (target, attribute expression) pairs, one per object, each picking out its object alone."""
    out: list[tuple[int, dict]] = []
    for target in rng.sample(range(len(objects)), len(objects)):
        if len(out) == count:
            break
        t = objects[target]
        full = {"size": t.size, "color": t.color, "shape": t.shape}
        unique = [{k: full[k] for k in keys} for keys in _SIMPLE_KEYS
                  if resolve({"kind": "attribute", "desc": {k: full[k] for k in keys}}, objects) == [target]]
        if unique:
            out.append((target, {"kind": "attribute", "desc": rng.choice(unique)}))
    return out


def absent_expressions(objects: Sequence[dict[str, Any]] | Sequence[SceneObject], rng: random.Random,
                       count: int = 1) -> list[str]:
    """Up to `count` attribute descriptions that match no object of the scene ("the red star" where there
    is none): the negatives that "not found" is calibrated and scored on. Half name a colour and shape
    that both occur in the scene, just not together (the hard case), the rest any absent combination."""
    objs = [o if isinstance(o, dict) else asdict(o) for o in objects]
    present = {(o["color"], o["shape"]) for o in objs}
    colors, shapes = sorted({o["color"] for o in objs}), sorted({o["shape"] for o in objs})
    mixed = [(c, s) for c in colors for s in shapes if (c, s) not in present]
    anywhere = [(c, s) for c in sorted(COLORS) for s in SHAPES if (c, s) not in present and (c, s) not in mixed]
    out: list[str] = []
    for i in range(count):
        pool = mixed if (i % 2 == 0 and mixed) or not anywhere else anywhere
        if not pool:
            break
        c, s = pool.pop(rng.randrange(len(pool)))
        out.append(f"the {c} {s}")
    return out


_SIMPLE_KEYS = (("shape",), ("color",), ("color", "shape"), ("size", "shape"), ("size", "color"),
                ("size", "color", "shape"))


# --------------------------------------------------------------------------------------------------
# Drawing


def _polygon(shape: str, box: tuple[float, float, float, float]) -> list[tuple[float, float]] | None:
    x0, y0, x1, y1 = box
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    if shape == "triangle":
        return [(cx, y0), (x1, y1), (x0, y1)]
    if shape == "diamond":
        return [(cx, y0), (x1, cy), (cx, y1), (x0, cy)]
    if shape == "hexagon":
        return [(cx + r * math.cos(math.pi / 3 * k), cy + r * math.sin(math.pi / 3 * k)) for k in range(6)]
    if shape == "star":
        pts = []
        for k in range(10):
            radius = r if k % 2 == 0 else r * 0.45
            angle = -math.pi / 2 + math.pi / 5 * k
            pts.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle) + r * 0.1))
        return pts
    return None


def _draw_object(image: Image.Image, obj: SceneObject, rng: random.Random) -> None:
    mask = Image.new("L", image.size, 0)
    mdraw = ImageDraw.Draw(mask)
    box = [obj.box[0], obj.box[1], obj.box[2] - 1, obj.box[3] - 1]
    poly = _polygon(obj.shape, tuple(box))
    if obj.shape == "circle":
        mdraw.ellipse(box, fill=255)
    elif obj.shape == "square":
        mdraw.rectangle(box, fill=255)
    else:
        mdraw.polygon(poly, fill=255)
    base = tuple(max(0, min(255, c + rng.randint(-15, 15))) for c in COLORS[obj.color])
    fill = Image.new("RGB", image.size, base)
    if obj.texture != "solid":
        dark = tuple(int(c * 0.6) for c in base)
        tdraw = ImageDraw.Draw(fill)
        x0, y0, x1, y1 = (int(v) for v in obj.box)
        if obj.texture == "striped":
            for x in range(x0 - (y1 - y0), x1, 6):
                tdraw.line([(x, y1), (x + (y1 - y0), y0)], fill=dark, width=2)
        else:
            for y in range(y0 + 2, y1, 6):
                for x in range(x0 + 2 + (y // 6 % 2) * 3, x1, 6):
                    tdraw.ellipse([x, y, x + 2, y + 2], fill=dark)
    image.paste(fill, (0, 0), mask)


def _background(size: tuple[int, int], rng: random.Random) -> Image.Image:
    w, h = size
    base = [rng.randint(170, 240) for _ in range(3)]
    image = Image.new("RGB", size, tuple(base))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(15, 40)):  # clutter: thin strokes and specks in muted tones
        tone = tuple(max(0, min(255, c + rng.randint(-60, 30))) for c in base)
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        if rng.random() < 0.6:
            draw.line([(x, y), (x + rng.uniform(-40, 40), y + rng.uniform(-40, 40))], fill=tone,
                      width=rng.randint(1, 2))
        else:
            r = rng.uniform(1, 3)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=tone)
    return image


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    return iw * ih / min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))


def make_scene(rng: random.Random, size: tuple[int, int] = (256, 256)) -> tuple[Image.Image, list[SceneObject]]:
    """Draw one scene: 5-8 objects drawn from 2-3 shapes and 2-3 colours; up to 20 % occlusion."""
    w, h = size
    shapes = rng.sample(SHAPES, rng.randint(2, 3))
    colors = rng.sample(sorted(COLORS), rng.randint(2, 3))
    objects: list[SceneObject] = []
    target_count = rng.randint(5, 8)
    scale = min(w, h) / 256
    for _ in range(200):
        if len(objects) == target_count:
            break
        size_class = rng.choice(("small", "large"))
        side = rng.uniform(22, 34) if size_class == "small" else rng.uniform(48, 72)
        side = round(side * scale)
        x0, y0 = rng.randint(2, w - side - 2), rng.randint(2, h - side - 2)
        box = (float(x0), float(y0), float(x0 + side), float(y0 + side))
        if any(_overlap(box, o.box) > 0.2 for o in objects):
            continue
        objects.append(SceneObject(rng.choice(shapes), rng.choice(colors), size_class, rng.choice(TEXTURES), box))
    image = _background(size, rng)
    for obj in objects:  # later objects may cover a corner of earlier ones
        _draw_object(image, obj, rng)
    return image, objects


# --------------------------------------------------------------------------------------------------
# The benchmark files


def _split_of(rng: random.Random) -> str:
    u, acc = rng.random(), 0.0
    for name, share in SPLITS:
        acc += share
        if u < acc:
            return name
    return SPLITS[-1][0]


def _scene_samples(seed: int, index: int, size: tuple[int, int], per_scene: int,
                   simple: int = 0) -> tuple[Image.Image, list[SceneObject], list[dict]]:
    rng = random.Random(f"ofa-grounding-synthetic/{seed}/{index}")
    split = _split_of(rng)
    image, objects = make_scene(rng, size)
    samples: list[dict] = []
    kinds_used: set[str] = set()
    for target in rng.sample(range(len(objects)), len(objects)):
        if len(samples) == per_scene:
            break
        candidates = candidate_expressions(target, objects, rng)
        if not candidates:
            continue
        fresh = [c for c in candidates if c["kind"] not in kinds_used] or candidates
        kinds = sorted({c["kind"] for c in fresh})
        kind = rng.choice(kinds)  # balance kinds, not the (many more) relation candidates
        expr = next(c for c in fresh if c["kind"] == kind)
        kinds_used.add(kind)
        samples.append({"text": render_text(expr, rng), "box": list(objects[target].box), "split": split,
                        "kind": kind, "target": target, "expression": expr})
    if simple and split == "train":
        simple_rng = random.Random(f"ofa-grounding-synthetic/{seed}/{index}/simple")
        for target, expr in simple_expressions(objects, simple_rng, simple):
            samples.append({"text": render_text(expr, simple_rng), "box": list(objects[target].box),
                            "split": split, "kind": "simple", "target": target, "expression": expr})
    return image, objects, samples


def _rendered_scene(job: tuple) -> tuple[bytes, str, tuple[int, int], list[dict], list[dict]]:
    """Scene `index` as (file bytes, extension, size, objects as rows, samples), in a worker process when
    `workers` > 1. v1 scenes are PNG; v2 scenes JPEG or PNG as drawn."""
    world, seed, index, size, per_scene, simple, absent, max_side, corner_squares = job
    if world == "v1":
        image, objects, samples = _scene_samples(seed, index, size, per_scene, simple)
        png = io.BytesIO()
        image.save(png, format="PNG", optimize=False, compress_level=6)
        for s in samples:
            s["extra"] = s["kind"] == "simple"
        return png.getvalue(), "png", size, [asdict(o) | {"box": list(o.box)} for o in objects], samples
    from . import synthetic_v2

    rng = random.Random(f"ofa-grounding-synthetic-v2/{seed}/{index}")
    split = _split_of(rng)
    count = int(absent) + (rng.random() < absent - int(absent))
    image, objects, info, samples = synthetic_v2.scene_samples(seed, index, per_scene, simple, count, split,
                                                               max_side, rng, corner_squares)
    data, ext = synthetic_v2.encode_image(image, info)
    rows = [asdict(o) | {"box": list(o.box), "fill": o.texture} | extra
            for o, extra in zip(objects, info["objects"])]
    for row in rows:
        del row["texture"]
    for s in samples:
        s["split"] = split
    return data, ext, image.size, rows, samples


WORLDS = ("v1", "v2")


def write_synthetic(out: str | Path, n: int, seed: int = 0, size: tuple[int, int] = (256, 256),
                    per_scene: int = 2, simple: int = 0, workers: int = 1, world: str = "v1",
                    absent: float = 0.5, max_side: int = 1600, progress: bool = False,
                    corner_squares: float = 0.0) -> dict[str, int]:
    """Write `n` samples: OUT/images/<scene>.<png|jpg> and OUT/{train,val,test}.jsonl. Returns counts per split.

    `world`: "v1" (square `size` scenes, this module) or "v2" (the wide world, `synthetic_v2`: any canvas up
    to `max_side` pixels, `size` unused; `absent` descriptions of absent objects per scene on average, rows
    with `"box": null`; `corner_squares`, for training data, as in `synthetic_v2.make_scene`). `simple` adds
    up to that many easy expressions per train scene (kind "simple"); they are not counted in `n` and leave
    every benchmark row unchanged. `workers` > 1 draws scenes in that many
    processes; the files are byte-identical to one process's. `progress` shows a tqdm bar on stderr, counting
    the `n` samples as their scenes are drawn.
    """
    from tqdm import tqdm

    if world not in WORLDS:
        raise ValueError(f"unknown world {world!r}; known: {', '.join(WORLDS)}")
    if not 0 <= corner_squares <= 1 or (corner_squares and world != "v2"):
        raise ValueError(f"corner_squares must be a share in [0, 1] of v2 scenes, got {corner_squares!r} "
                         f"for world {world!r}")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[dict]] = {name: [] for name, _ in SPLITS}
    pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else None
    block = 64 * max(1, workers)  # scenes drawn ahead: a few more than needed at most, never unbounded
    written, start = 0, 0
    bar = tqdm(total=n, desc="drawing", unit="sample", disable=not progress, dynamic_ncols=True)
    try:
        while written < n:
            jobs = [(world, seed, index, size, per_scene, simple, absent, max_side, corner_squares)
                    for index in range(start, start + block)]
            scenes = pool.imap(_rendered_scene, jobs, chunksize=8) if pool else map(_rendered_scene, jobs)
            for index, (data, ext, image_size, scene, samples) in zip(range(start, start + block), scenes):
                counted = [s for s in samples if not s["extra"]][: n - written]
                samples = counted + [s for s in samples if s["extra"]] if counted else []
                if not samples:
                    continue
                name = f"images/{index:06d}.{ext}"
                (out / name).write_bytes(data)
                for k, s in enumerate(samples):
                    row = {"id": f"syn-{index:06d}-{k}", "image": name, "text": s["text"], "box": s["box"],
                           "split": s["split"], "kind": s["kind"], "target": s["target"],
                           "expression": s["expression"], "image_size": list(image_size), "objects": scene}
                    rows[s["split"]].append(row if world == "v1" else row | {"world": world})
                written += len(counted)
                bar.update(len(counted))
            start += block
    finally:
        bar.close()
        if pool:
            pool.terminate()
    for split, split_rows in rows.items():
        with (out / f"{split}.jsonl").open("w", encoding="utf-8") as f:
            for row in split_rows:
                f.write(json.dumps(row, sort_keys=False) + "\n")
    return {split: len(split_rows) for split, split_rows in rows.items()}


# --------------------------------------------------------------------------------------------------
# Trivial baselines


def _baseline_boxes(row: dict) -> dict[str, list[float]]:
    objects = [SceneObject(o["shape"], o["color"], o["size"], o.get("texture", o.get("fill")), tuple(o["box"]))
               for o in row["objects"]]
    largest = max(objects, key=lambda o: o.area)
    w, h = row["image_size"]
    centre = min(objects, key=lambda o: (o.center[0] - w / 2) ** 2 + (o.center[1] - h / 2) ** 2)
    from .synthetic_v2 import COLOR_WORDS, SHAPE_WORDS

    words = row["text"].lower().replace("?", "").replace(".", "").split()
    colors = {w: c for c, ws in COLOR_WORDS.items() for w in ws}
    shapes = {w: s for s, ws in SHAPE_WORDS.items() for w in ws if " " not in w}
    color = next((colors[w] for w in words if w in colors), None)
    shape = next((shapes[w] for w in words if w in shapes), None)
    by_color = [o for o in objects if o.color == color] or objects
    by_shape = [o for o in objects if o.shape == shape] or objects
    return {"largest object": list(largest.box), "object nearest the centre": list(centre.box),
            "colour only (largest of the first colour named)": list(max(by_color, key=lambda o: o.area).box),
            "shape only (largest of the first shape named)": list(max(by_shape, key=lambda o: o.area).box)}


def baseline_accuracies(rows: Sequence[dict]) -> dict[str, float]:
    """Acc@0.5 of trivial strategies that ignore (most of) the expression."""
    hits: dict[str, int] = {}
    rows = [row for row in rows if row["box"] is not None]  # not for descriptions of absent objects
    for row in rows:
        for name, box in _baseline_boxes(row).items():
            hits[name] = hits.get(name, 0) + is_hit(box, row["box"])
    return {name: count / max(len(rows), 1) for name, count in hits.items()}
