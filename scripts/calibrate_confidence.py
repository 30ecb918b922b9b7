#!/usr/bin/env python
"""How well `confidence` separates right from wrong answers, and how well "not found" works.

    python scripts/calibrate_confidence.py MODEL_DIR --data BENCH [--n 1000] [--write] [--plot docs/x.png]

On the synthetic benchmark BENCH (make-synthetic's folder): positives are its rows (the described object is
there), negatives are descriptions of an absent object ("the red star" in a scene without one; half name a
colour and a shape the scene has, never together), one per positive, on the same images. Reported per split:
- `learned`: the model's own answer (found: false for the null box, which `train --absent-rate` teaches);
- `with_threshold`: that plus a `min_confidence` chosen on the val split (the one that maximises balanced
  accuracy: negatives answered "not found", positives "found"), scored on the test split;
- AUROC of confidence for hits vs misses and for present vs absent objects, and a reliability table
  (Acc@0.5 per confidence decile).
`--write` stores the threshold in MODEL_DIR/grounding.json (which `Grounder.from_pretrained`, and so the CLI,
the server and the web page, then use) when it raises val balanced accuracy by at least a point over the
learned answer alone. Prints one JSON object. The threshold is compared with `confidence`: the raw value
here (the model is loaded without its calibration); `ofa-ground calibrate` fits the probability that an
answer is right, after which a threshold is a probability.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from ofa_grounding import Grounder
from ofa_grounding.calibration import auroc
from ofa_grounding.checkpoint import GROUNDING_FILE, read_grounding
from ofa_grounding.data import open_dataset
from ofa_grounding.metrics import is_hit
from ofa_grounding.synthetic import absent_expressions


def run_split(grounder: Grounder, data: str, split: str, n: int, seed: int) -> dict[str, list]:
    rows = [s for _, s in zip(range(n), open_dataset(data, split=split))]
    rng = random.Random(seed)
    by_image: dict[str, list] = {}
    for s in rows:
        by_image.setdefault(s.image_key, []).append(s)
    run: dict[str, list] = {"pos_conf": [], "pos_hit": [], "pos_found": [], "neg_conf": [], "neg_found": []}
    for samples in by_image.values():
        negatives = absent_expressions(samples[0].meta["objects"], rng, len(samples))
        results = grounder.predict(samples[0].image, [s.text for s in samples] + negatives)
        for s, r in zip(samples, results):
            run["pos_conf"].append(r.confidence)
            run["pos_hit"].append(bool(is_hit(r.box, s.box)))
            run["pos_found"].append(r.found)
        run["neg_conf"] += [r.confidence for r in results[len(samples):]]
        run["neg_found"] += [r.found for r in results[len(samples):]]
    return run


def decisions(run: dict[str, list], t: float) -> dict[str, float]:
    """found = the model's answer is not the null box and its confidence is at least t."""
    pos_found = [f and c >= t for c, f in zip(run["pos_conf"], run["pos_found"])]
    neg_nf = [not (f and c >= t) for c, f in zip(run["neg_conf"], run["neg_found"])]
    nf_true, nf_false = sum(neg_nf), sum(not f for f in pos_found)
    hits = run["pos_hit"]
    return {
        "not_found_precision": nf_true / max(nf_true + nf_false, 1),  # of "not found" answers, absent objects
        "not_found_recall": nf_true / max(len(neg_nf), 1),  # of absent objects, answered "not found"
        "positives_found": sum(pos_found) / max(len(pos_found), 1),
        "hits_kept": sum(h and f for h, f in zip(hits, pos_found)) / max(sum(hits), 1),
        "misses_flagged": sum(not h and not f for h, f in zip(hits, pos_found)) / max(len(hits) - sum(hits), 1),
        "balanced_accuracy": (sum(neg_nf) / max(len(neg_nf), 1) + sum(pos_found) / max(len(pos_found), 1)) / 2,
    }


def reliability(run: dict[str, list], bins: int = 10) -> list[dict]:
    """Acc@0.5 per confidence decile of the positives (confidences of 1,000-bin coordinates are small: the
    geometric mean of four bin probabilities, so deciles rather than fixed 0.1-wide bins)."""
    ranked = sorted(zip(run["pos_conf"], run["pos_hit"]))
    out = []
    for b in range(bins):
        part = ranked[b * len(ranked) // bins:(b + 1) * len(ranked) // bins]
        if part:
            out.append({"confidence": [round(part[0][0], 4), round(part[-1][0], 4)], "count": len(part),
                        "acc50": round(sum(h for _, h in part) / len(part), 4)})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("--data", required=True, help="a make-synthetic folder (its val and test splits)")
    ap.add_argument("--n", type=int, default=1000, help="positives per split (default 1000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--write", action="store_true", help=f"store the threshold in MODEL/{GROUNDING_FILE}")
    ap.add_argument("--plot", type=Path, help="write a reliability plot (needs matplotlib)")
    args = ap.parse_args()
    grounder = Grounder.from_pretrained(args.model, min_confidence=0, calibration=None)
    val = run_split(grounder, args.data, "val", args.n, args.seed)
    test = run_split(grounder, args.data, "test", args.n, args.seed + 1)
    candidates = [0.0, *sorted(set(val["pos_conf"]) | set(val["neg_conf"]))]
    threshold = max(candidates, key=lambda t: (decisions(val, t)["balanced_accuracy"], -t))
    gain = decisions(val, threshold)["balanced_accuracy"] - decisions(val, 0.0)["balanced_accuracy"]
    report = {"model": str(args.model), "data": args.data, "n_per_split": args.n, "threshold_from": "val",
              "min_confidence": round(threshold, 4), "threshold_gain_on_val": round(gain, 4)}
    for name, run in (("val", val), ("test", test)):
        misses = [c for c, h in zip(run["pos_conf"], run["pos_hit"]) if not h]
        report[name] = {
            "positives": len(run["pos_conf"]), "negatives": len(run["neg_conf"]),
            "acc50": sum(run["pos_hit"]) / len(run["pos_hit"]),
            "auroc_hit_vs_miss": auroc([c for c, h in zip(run["pos_conf"], run["pos_hit"]) if h], misses)
            if misses and len(misses) < len(run["pos_hit"]) else None,
            "auroc_present_vs_absent": auroc(run["pos_conf"], run["neg_conf"]),
            "learned": {k: round(v, 4) for k, v in decisions(run, 0.0).items()},
            "with_threshold": {k: round(v, 4) for k, v in decisions(run, threshold).items()},
            "reliability": reliability(run)}
    if args.write and gain >= 0.01:
        (args.model / GROUNDING_FILE).write_text(json.dumps({
            **read_grounding(args.model),  # keeps a calibration (ofa-ground calibrate) and other keys
            "min_confidence": report["min_confidence"],
            "how": f"scripts/calibrate_confidence.py on {args.data} (val split, {args.n} positives + as many "
                   "absent-object descriptions; the threshold with the best balanced accuracy)",
            "test": report["test"]["with_threshold"]},
            indent=1) + "\n")
    if args.plot:
        _plot(report["test"]["reliability"], test, threshold, args.plot)
    print(json.dumps(report, indent=1))
    return 0


def _plot(bins: list[dict], run: dict[str, list], threshold: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot([sum(x["confidence"]) / 2 for x in bins], [x["acc50"] for x in bins], "o-", color="tab:blue")
    a.set(xlabel="confidence (decile of the test positives, mean of its range)", ylabel="Acc@0.5 in that decile",
          title="reliability", ylim=(0, 1))
    top = max(max(run["pos_conf"]), max(run["neg_conf"]))
    edges = [top * i / 40 for i in range(41)]
    b.hist([c for c, h in zip(run["pos_conf"], run["pos_hit"]) if h], bins=edges, alpha=0.6, label="hit")
    b.hist([c for c, h in zip(run["pos_conf"], run["pos_hit"]) if not h], bins=edges, alpha=0.6, label="miss")
    b.hist(run["neg_conf"], bins=edges, alpha=0.6, label="absent object")
    b.axvline(threshold, color="k", ls="--", lw=1, label=f"min_confidence {threshold:.3f}")
    b.set(xlabel="confidence", ylabel="count (test)", title="confidence by outcome")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
