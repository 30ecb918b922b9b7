"""Would a second look at the image tell right answers from wrong ones better than the model's own
probabilities do? Each description is answered three times: as the model sees it, at a larger image side
(`--scale`), and mirrored (image flipped, left/right words swapped, box mirrored back). How much a second
answer agrees with the first (IoU of the boxes; 1 when both say "not found", 0 when only one does) becomes a
feature beside the calibration's; the calibration's logistic model (`calibration._newton`, the same L2) is
fitted on the benchmark's val split and AUROC (right vs wrong answers) reported on its test split.

    python scripts/confidence_views.py [--model demo] [--data data/v2-bench] [--scale 1.25]

A research script (issue 27's AUROC target): each view costs another forward pass per query, so the answer
decides whether a two-look confidence is worth offering.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch
from PIL import ImageOps

from confidence_features import report  # this folder's: the same fit and table
from ofa_grounding import Grounder
from ofa_grounding.calibration import answered_not_found, features
from ofa_grounding.data import open_dataset
from ofa_grounding.metrics import box_iou, is_hit
from ofa_grounding.train.data import mirror_text


def agreement(a, b) -> float:
    na, nb = answered_not_found(a), answered_not_found(b)
    if na or nb:
        return float(na and nb)
    return box_iou(a.box, b.box)


def answers(native: Grounder, larger: Grounder, data: str, split: str) -> list[dict]:
    by_image: dict[str, list] = {}
    for s in open_dataset(data, split=split):
        by_image.setdefault(str(s.image), []).append(s)
    rows = []
    for path, samples in by_image.items():
        image = native.load_image(path)  # as predict reads it (EXIF orientation, RGB)
        mirror = ImageOps.mirror(image)
        texts = [s.text for s in samples]
        first = native.predict(image, texts)
        big = larger.predict(image, texts)
        flipped = native.predict(mirror, [mirror_text(t) for t in texts])
        w = image.width
        for s, a, b, f in zip(samples, first, big, flipped):
            f = dataclasses.replace(f, box=(w - f.box[2], f.box[1], w - f.box[0], f.box[3]))
            not_found = answered_not_found(a)
            right = s.box is None if not_found else s.box is not None and is_hit(a.box, s.box)
            rows.append({"not_found": not_found, "right": right, **features(a), "scale_agree": agreement(a, b),
                         "flip_agree": agreement(a, f)})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="demo")
    ap.add_argument("--data", default="data/v2-bench")
    ap.add_argument("--scale", type=float, default=1.25, help="the second view's image side, times the model's")
    args = ap.parse_args()
    torch.set_num_threads(1)
    native = Grounder.from_pretrained(args.model, calibration=None, min_confidence=0)
    side = round(native.preprocess.patch_image_size * args.scale / 16) * 16
    larger = Grounder(native.model, native.tokenizer,
                      dataclasses.replace(native.preprocess, patch_image_size=side, max_image_size=side),
                      native.generation)
    start = time.time()
    val, test = answers(native, larger, args.data, "val"), answers(native, larger, args.data, "test")
    print(f"{args.model} on {args.data} (second view at {side} px; {time.time() - start:.0f} s): fitted on val "
          f"({len(val)} answers), scored on test ({len(test)} answers, {sum(r['right'] for r in test)} right)\n")
    report(val, test, {"the calibration's": [], "+ agreement with the larger view": ["scale_agree"],
                       "+ agreement with the mirrored view": ["flip_agree"], "+ both": ["scale_agree", "flip_agree"]})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
