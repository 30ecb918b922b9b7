"""A confidence people can read: the probability that an answer is right, from what a `GroundingResult` carries.

An answer is right when, for a box answer, its box has IoU >= 0.5 with the true box (OFA's hit rule,
`metrics.is_hit`), and, for a "not found" answer (the model answered the null box, or the description is
empty), when the image does not contain the described object. Each kind of answer has its own logistic
regression on a few standardised features of the result (`features`: the raw confidence, the beam score,
how much the other beams agree, the box's size), fitted by Newton's method (IRLS) with a little L2. A kind
with too few answers to fit (fewer than `MIN_ANSWERS`, or fewer than `MIN_EACH` right or wrong ones) gets a
constant instead, its observed rate of right answers smoothed by Laplace's rule, and the record says why.

The fitted record is plain JSON numbers (`Calibration.to_json`); a model directory keeps it in its
grounding.json (`checkpoint.GROUNDING_FILE`), which `Grounder.from_pretrained` reads. `ofa-ground calibrate`
fits one on a labelled split and reports ECE and AUROC on held-out rows. numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .image import NULL_BOX_MAX_BIN
from .metrics import box_overlap

if TYPE_CHECKING:
    from .predictor import GroundingResult

__all__ = ["BOX_FEATURES", "NOT_FOUND_FEATURES", "AnswerModel", "Calibration", "answered_not_found", "auroc",
           "expected_calibration_error", "features", "fit", "reliability_plot", "reliability_table"]

FORMAT = 1  # the stored record's layout
# Features per kind of answer. For a "not found" answer the box is the null box (no size worth a feature)
# and the other beams' share of boxes is 1 - agreement, so both are left out. A record names the features it
# uses, so records fitted before a feature was added keep working.
BOX_FEATURES = ("log_raw_confidence", "score", "agreement", "not_found_share", "log_area_share", "zoomed")
NOT_FOUND_FEATURES = ("log_raw_confidence", "score", "agreement")
MIN_ANSWERS, MIN_EACH = 20, 5  # below these, a kind of answer gets a constant
L2 = 1.0  # on standardised features; the bias is not penalised
TOKENS_PER_ANSWER = 5  # 4 coordinates + end of sequence: a beam's score is their mean log-probability
NULL_SHARE = NULL_BOX_MAX_BIN / 1000  # the null box lies within this share of the image's sides (image.is_null_box)


def _is_null(box: Sequence[float], size_wh: tuple[int, int]) -> bool:
    w, h = size_wh
    return max(box[0] / w, box[2] / w, box[1] / h, box[3] / h) < NULL_SHARE


def answered_not_found(result: GroundingResult) -> bool:
    """Whether the model's own answer is "not found": the null box (`image.is_null_box`, read from the box's
    share of the image), or an empty description. `min_confidence` plays no part."""
    return _is_null(result.box, result.image_size) or not result.text.strip()


def features(result: GroundingResult) -> dict[str, float]:
    """Every feature a calibration may use, from the result alone (its raw confidence, so a calibrated result
    gives the same features):

    log_raw_confidence: log of `raw_confidence` (the geometric mean of the 4 coordinate tokens' probabilities);
    score: the best beam's score (mean log-probability of its 5 tokens);
    agreement: how much of the beams' probability mass (softmax of their total log-probabilities, the best
        beam included) answers like the best beam: IoU with its box for box answers, 1 per beam that is also
        "not found" for a "not found" answer;
    not_found_share: the share of that mass on "not found" answers (null boxes);
    log_area_share: log of the box's area as a share of the image's (corners put in order; floor 1e-6);
    zoomed: 1 when the box comes from a second look at a crop (`GroundingResult.zoomed`), else 0: such boxes are
        right more often than their first look's scores say (the scores stay the first look's).
    """
    size = result.image_size
    best_null = answered_not_found(result)
    beams = [(result.box, result.score), *((a.box, a.score) for a in result.alternatives)]
    scores = np.array([s for _, s in beams], dtype=np.float64) * TOKENS_PER_ANSWER
    scores = np.where(np.isfinite(scores), scores, -1e9)
    weights = np.exp(scores - scores.max())
    weights /= weights.sum()
    nulls = [_is_null(b, size) for b, _ in beams]
    if best_null:
        agree = [float(n) for n in nulls]
    else:
        agree = [0.0 if n else box_overlap(b, result.box) for (b, _), n in zip(beams, nulls)]
    x0, x1 = sorted((result.box[0], result.box[2]))
    y0, y1 = sorted((result.box[1], result.box[3]))
    area_share = (x1 - x0) * (y1 - y0) / (size[0] * size[1])
    return {"log_raw_confidence": math.log(max(result.raw_confidence, 1e-30)),
            "score": result.score,
            "agreement": float(weights @ np.array(agree)),
            "not_found_share": float(weights @ np.array(nulls, dtype=np.float64)),
            "log_area_share": math.log(max(area_share, 1e-6)),
            "zoomed": float(result.zoomed)}


@dataclass(frozen=True)
class AnswerModel:
    """P(right) for one kind of answer: sigmoid(bias + sum(weights * (x - means) / scales)) over `features`,
    or, when `constant` is set, that constant (`reason` says why). `answers` and `right` count the answers
    of this kind it was fitted on."""

    features: tuple[str, ...] = ()
    means: tuple[float, ...] = ()
    scales: tuple[float, ...] = ()
    weights: tuple[float, ...] = ()
    bias: float = 0.0
    answers: int = 0
    right: int = 0
    constant: float | None = None
    reason: str = ""

    def probability(self, values: dict[str, float]) -> float:
        if self.constant is not None:
            return self.constant
        z = self.bias
        for name, mean, scale, weight in zip(self.features, self.means, self.scales, self.weights):
            x = values[name]
            z += weight * ((x - mean) / scale if math.isfinite(x) else 0.0)  # non-finite: as the mean
        return 1 / (1 + math.exp(-z)) if z >= 0 else math.exp(z) / (1 + math.exp(z))

    def to_json(self) -> dict[str, Any]:
        counts = {"answers": self.answers, "right": self.right}
        if self.constant is not None:
            return {"kind": "constant", "probability": self.constant, "reason": self.reason, **counts}
        return {"kind": "logistic", "features": list(self.features), "means": list(self.means),
                "scales": list(self.scales), "weights": list(self.weights), "bias": self.bias, **counts}

    @classmethod
    def from_json(cls, data: Any, where: str, allowed: Sequence[str]) -> AnswerModel:
        """Raises ValueError naming `where` and the problem."""
        if not isinstance(data, dict):
            raise ValueError(f"{where} must be an object")
        counts = {k: data.get(k, 0) for k in ("answers", "right")}
        for k, v in counts.items():
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{where}.{k} must be a count, got {v!r}")
        kind = data.get("kind")
        if kind == "constant":
            p = data.get("probability")
            if not _is_number(p) or not 0 <= p <= 1:
                raise ValueError(f"{where}.probability must be a number in [0, 1], got {p!r}")
            return cls(constant=float(p), reason=str(data.get("reason", "")), **counts)
        if kind != "logistic":
            raise ValueError(f"{where}.kind must be \"logistic\" or \"constant\", got {kind!r}")
        names = data.get("features")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise ValueError(f"{where}.features must be a list of feature names")
        unknown = [n for n in names if n not in allowed]
        if unknown:
            raise ValueError(f"{where}.features: unknown feature(s) {', '.join(unknown)} (known: {', '.join(allowed)})")
        arrays = {}
        for key in ("means", "scales", "weights"):
            values = data.get(key)
            if not isinstance(values, list) or len(values) != len(names) or not all(map(_is_number, values)):
                raise ValueError(f"{where}.{key} must be {len(names)} finite numbers, one per feature")
            arrays[key] = tuple(float(v) for v in values)
        if any(s <= 0 for s in arrays["scales"]):
            raise ValueError(f"{where}.scales must be positive")
        if not _is_number(data.get("bias")):
            raise ValueError(f"{where}.bias must be a finite number, got {data.get('bias')!r}")
        return cls(tuple(names), bias=float(data["bias"]), **arrays, **counts)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class Calibration:
    """Maps a result to the probability that its answer is right: `box` for box answers, `not_found` for
    "not found" answers. `info` holds what the record says about itself (how, when and on which data it was
    fitted, its held-out ECE and AUROC: `ofa-ground calibrate` fills it), kept as given."""

    box: AnswerModel
    not_found: AnswerModel
    info: dict[str, Any] = field(default_factory=dict)

    def apply(self, result: GroundingResult, not_found: bool | None = None) -> float:
        """P(the answer is right). `not_found`: whether the answer is "not found" (default:
        `answered_not_found(result)`; the Grounder passes its own reading of the tokens)."""
        if not_found is None:
            not_found = answered_not_found(result)
        return (self.not_found if not_found else self.box).probability(features(result))

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "box": self.box.to_json(), "not_found": self.not_found.to_json(), **self.info}

    @classmethod
    def from_json(cls, data: Any) -> Calibration:
        """The record `to_json` wrote; ValueError (one line, naming the field) for anything else."""
        if not isinstance(data, dict):
            raise ValueError("calibration must be a JSON object")
        if data.get("format") != FORMAT:
            raise ValueError(f"calibration.format must be {FORMAT}, got {data.get('format')!r}")
        box = AnswerModel.from_json(data.get("box"), "calibration.box", BOX_FEATURES)
        not_found = AnswerModel.from_json(data.get("not_found"), "calibration.not_found", NOT_FOUND_FEATURES)
        return cls(box, not_found, {k: v for k, v in data.items() if k not in ("format", "box", "not_found")})


def fit(results: Sequence[GroundingResult], labels: Sequence[bool], l2: float = L2,
        info: dict[str, Any] | None = None) -> Calibration:
    """Fit both kinds of answer on `results` (raw, or calibrated: only `raw_confidence` is read) and whether
    each answer is right (`labels`)."""
    if len(results) != len(labels):
        raise ValueError(f"{len(results)} results but {len(labels)} labels")
    kinds = [answered_not_found(r) for r in results]
    models = []
    for not_found, names in ((False, BOX_FEATURES), (True, NOT_FOUND_FEATURES)):
        rows = [features(r) for r, k in zip(results, kinds) if k == not_found]
        y = np.array([bool(v) for v, k in zip(labels, kinds) if k == not_found], dtype=np.float64)
        what = "\"not found\" answers" if not_found else "box answers"
        models.append(_fit_kind(np.array([[f[n] for n in names] for f in rows]).reshape(len(rows), len(names)),
                                y, names, l2, what))
    return Calibration(models[0], models[1], dict(info or {}))


def _fit_kind(x: np.ndarray, y: np.ndarray, names: Sequence[str], l2: float, what: str) -> AnswerModel:
    n, right = len(y), int(y.sum())
    counts = {"answers": n, "right": right}
    if n < MIN_ANSWERS or min(right, n - right) < MIN_EACH:
        fewer = min(right, n - right)
        which = "wrong" if right > n - right else "right"
        why = (f"only {n} {what} (fewer than {MIN_ANSWERS})" if n < MIN_ANSWERS else
               f"{n} {what}, none {which}" if fewer == 0 else
               f"{n} {what}, only {fewer} of them {which} (fewer than {MIN_EACH})")
        return AnswerModel(constant=(right + 1) / (n + 2), reason=f"{why}: their rate of right answers, "
                           "smoothed ((right + 1) / (answers + 2))", **counts)
    finite = np.isfinite(x)  # non-finite values are left out of the means and scales, then count as the mean
    seen = np.maximum(finite.sum(axis=0), 1)
    means = np.where(finite, x, 0.0).sum(axis=0) / seen
    spread = np.sqrt((np.where(finite, x - means, 0.0) ** 2).sum(axis=0) / seen)
    scales = np.where(spread > 1e-12, spread, 1.0)  # a constant feature: scale 1, and L2 keeps its weight 0
    z = np.where(finite, (x - means) / scales, 0.0)
    w = _newton(np.hstack([np.ones((n, 1)), z]), y, l2)
    return AnswerModel(tuple(names), tuple(means.tolist()), tuple(scales.tolist()), tuple(w[1:].tolist()),
                       float(w[0]), **counts)


def _newton(x: np.ndarray, y: np.ndarray, l2: float, steps: int = 50) -> np.ndarray:
    """Weights minimising the logistic loss + l2/2 |w[1:]|^2 (column 0 is the bias): Newton steps, each
    halved until the loss goes down."""
    penalty = np.full(x.shape[1], l2)
    penalty[0] = 0.0

    def loss(w: np.ndarray) -> float:
        z = x @ w
        return float(np.sum(np.logaddexp(0, z) - y * z) + 0.5 * np.sum(penalty * w * w))

    w = np.zeros(x.shape[1])
    current = loss(w)
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(x @ w)))
        grad = x.T @ (p - y) + penalty * w
        hess = (x * (p * (1 - p))[:, None]).T @ x + np.diag(penalty) + 1e-9 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while t > 1e-6 and loss(w - t * step) > current:
            t /= 2
        w = w - t * step
        new = loss(w)
        if current - new < 1e-10 * max(1.0, abs(current)):
            break
        current = new
    return w


def expected_calibration_error(probs: Sequence[float], labels: Sequence[bool], bins: int = 10) -> float:
    """ECE: over `bins` equal-width bins of [0, 1], |share right - mean probability| weighted by each bin's
    share of the answers (1.0 falls in the last bin)."""
    p, y = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    if len(p) == 0 or len(p) != len(y):
        raise ValueError(f"need as many labels as probabilities, and at least one ({len(p)} and {len(y)})")
    which = np.clip((p * bins).astype(int), 0, bins - 1)
    gaps = [abs(y[which == b].mean() - p[which == b].mean()) * np.sum(which == b) for b in range(bins)
            if np.any(which == b)]
    return float(sum(gaps) / len(p))


def reliability_table(probs: Sequence[float], labels: Sequence[bool], bins: int = 10) -> list[dict[str, Any]]:
    """Per equal-width bin of [0, 1]: its range, how many answers, their mean probability and share right
    (None for an empty bin)."""
    p, y = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    which = np.clip((p * bins).astype(int), 0, bins - 1)
    out = []
    for b in range(bins):
        inside = which == b
        count = int(inside.sum())
        out.append({"low": b / bins, "high": (b + 1) / bins, "count": count,
                    "mean_probability": float(p[inside].mean()) if count else None,
                    "right": float(y[inside].mean()) if count else None})
    return out


def auroc(pos: Sequence[float], neg: Sequence[float]) -> float:
    """P(a random positive scores above a random negative), ties counted half (the Mann-Whitney U).
    ValueError when either side is empty."""
    if not len(pos) or not len(neg):
        raise ValueError(f"AUROC needs positives and negatives (got {len(pos)} and {len(neg)})")
    ranked = sorted([(v, 1) for v in pos] + [(v, 0) for v in neg])
    rank_sum, i = 0.0, 0
    while i < len(ranked):
        j = i
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        mean_rank = (i + j + 1) / 2  # 1-based ranks i+1..j share their mean
        rank_sum += mean_rank * sum(label for _, label in ranked[i:j])
        i = j
    n_pos, n_neg = len(pos), len(neg)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def reliability_plot(probs: Sequence[float], raw: Sequence[float], labels: Sequence[bool], path: str,
                     title: str = "") -> None:
    """A PNG: share right against confidence per 10 equal-width bins, calibrated and raw, beside the
    histogram of the calibrated probabilities of right and wrong answers. Needs matplotlib (the plot extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4.2))
    a.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="perfectly calibrated")
    for values, name, colour in ((probs, "calibrated", "tab:blue"), (raw, "raw", "tab:red")):
        rows = [r for r in reliability_table(values, labels) if r["count"]]
        a.plot([r["mean_probability"] for r in rows], [r["right"] for r in rows], "o-", color=colour, label=name)
        for r in rows:  # how many answers each point stands for
            a.annotate(str(r["count"]), (r["mean_probability"], r["right"]), textcoords="offset points",
                       xytext=(4, -10), fontsize=7, color=colour)
    a.set(xlabel="confidence (mean in each 0.1-wide bin)", ylabel="share of right answers", xlim=(0, 1),
          ylim=(0, 1.02), title="reliability")
    a.legend(fontsize=8, loc="lower right")
    edges = np.linspace(0, 1, 21)
    p, y = np.asarray(probs), np.asarray(labels, dtype=bool)
    b.hist([p[y], p[~y]], bins=edges, label=["right", "wrong"], color=["tab:green", "tab:orange"])
    b.set(xlabel="calibrated confidence", ylabel="answers", yscale="log", title="confidence by outcome")
    b.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
