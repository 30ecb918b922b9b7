"""Would more of what the beam search knows rank right answers above wrong ones better than the calibration's
features do? Fits the calibration's logistic model (`calibration._newton`, the same L2) on a benchmark's val
split and reports AUROC (right vs wrong answers) on its test split, with the stored features alone and with
the best beam's per-token log-probabilities added (their min / max / spread, or each of the 4 coordinates and
the end token).

    python scripts/confidence_features.py [--model demo] [--data data/v2-bench]

A research script (issue 27's AUROC target): the answer decides whether `GroundingResult` should carry the
per-token scores for the calibration.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

import ofa_grounding.predictor as predictor_module
from ofa_grounding import Grounder
from ofa_grounding.calibration import BOX_FEATURES, L2, NOT_FOUND_FEATURES, _newton, answered_not_found, auroc, features
from ofa_grounding.data import open_dataset
from ofa_grounding.evaluate import predict_samples
from ofa_grounding.metrics import is_hit


def answers(grounder: Grounder, data: str, split: str) -> list[dict]:
    """One record per answer: right or not, the calibration's features, the best beam's token log-probs."""
    scored: list[list[float]] = []  # every hypothesis the predictor turns into a confidence, in order
    raw_confidence = predictor_module._confidence

    def recording(h):  # the predictor calls it for each alternative, then for the best beam
        scored.append(list(h.positional_scores))
        return raw_confidence(h)

    predictor_module._confidence = recording
    try:
        results = [(s, r) for _, s, r in predict_samples(grounder, open_dataset(data, split=split), progress=False)]
    finally:
        predictor_module._confidence = raw_confidence
    rows, i = [], 0
    for sample, result in results:
        i += len(result.alternatives)
        best, i = scored[i], i + 1
        not_found = answered_not_found(result)
        right = sample.box is None if not_found else sample.box is not None and is_hit(result.box, sample.box)
        lp = np.array(best[:4])
        rows.append({"not_found": not_found, "right": right, **features(result), "lp_min": lp.min(),
                     "lp_max": lp.max(), "lp_std": lp.std(), "lp_end": best[4] if len(best) > 4 else 0.0,
                     **{f"lp{k}": lp[k] for k in range(4)}})
    assert i == len(scored), "the predictor scored hypotheses in another order than this script assumes"
    return rows


def fitted(train: list[dict], test: list[dict], names: list[str]) -> list[float]:
    x = np.array([[r[n] for n in names] for r in train])
    mean, std = x.mean(0), x.std(0) + 1e-9
    w = _newton(np.c_[np.ones(len(x)), (x - mean) / std], np.array([r["right"] for r in train], float), L2)
    xt = (np.array([[r[n] for n in names] for r in test]) - mean) / std
    return list(1 / (1 + np.exp(-(np.c_[np.ones(len(xt)), xt] @ w))))


def report(val: list[dict], test: list[dict], extras: dict[str, list[str]]) -> None:
    """A table row per feature set: the calibration's features plus `extras[label]`, fitted per kind of
    answer on `val`, scored on `test` (AUROC; shares of right and wrong answers at >= 0.5)."""
    print("| features | test AUROC | right answers at >= 0.5 | wrong answers at >= 0.5 |\n| --- | ---: | ---: | ---: |")
    for label, extra in extras.items():
        probs, labels = [], []
        for not_found, names in ((False, BOX_FEATURES), (True, NOT_FOUND_FEATURES)):
            train = [r for r in val if r["not_found"] == not_found]
            held = [r for r in test if r["not_found"] == not_found]
            probs += fitted(train, held, [*names, *extra])
            labels += [r["right"] for r in held]
        right = np.array([p for p, y in zip(probs, labels) if y])
        wrong = np.array([p for p, y in zip(probs, labels) if not y])
        print(f"| {label} | {auroc(list(right), list(wrong)):.4f} | {np.mean(right >= 0.5):.1%} | "
              f"{np.mean(wrong >= 0.5):.1%} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="demo")
    ap.add_argument("--data", default="data/v2-bench")
    args = ap.parse_args()
    torch.set_num_threads(1)
    grounder = Grounder.from_pretrained(args.model, calibration=None, min_confidence=0)
    val, test = answers(grounder, args.data, "val"), answers(grounder, args.data, "test")
    print(f"{args.model} on {args.data}: fitted on val ({len(val)} answers), scored on test ({len(test)} answers, "
          f"{sum(r['right'] for r in test)} right)\n")
    report(val, test, {"the calibration's": [], "+ token log-probs min, max, spread": ["lp_min", "lp_max", "lp_std"],
                       "+ each token's log-prob": ["lp0", "lp1", "lp2", "lp3", "lp_end"]})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
