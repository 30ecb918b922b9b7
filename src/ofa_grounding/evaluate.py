"""Run a Grounder over a dataset split: predictions, Acc@0.5 / Acc@0.75 / mean IoU, breakdowns.

Samples of one image that follow each other are decoded together (one image load and preprocessing,
one batched encoder/decoder pass). Under `torchrun` each process takes every world_size-th such
group, and rank 0 gathers the records: since a group is computed the same way whoever runs it, the
numbers equal a single-process run's.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from .data import DataIssue, Dataset, Sample
from .image import ImageLoadError
from .metrics import LENGTH_ORDER, SIZE_ORDER, box_iou, breakdown, is_hit, length_bucket, size_bucket, summarize
from .predictor import Grounder, GroundingResult

__all__ = ["EvalReport", "evaluate", "predict_samples", "PREDICTION_KEYS"]

PREDICTION_KEYS = ("id", "text", "box", "gt_box", "iou", "score", "split", "found")  # gt_box None: absent
BOX_TOLERANCE = 1.0  # pixels a ground-truth box may stick out of its image (rounding in annotations)


@dataclass
class EvalReport:
    split: str | None
    records: list[dict[str, Any]]
    issues: list[DataIssue] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def summary(self) -> dict[str, Any]:
        """`metrics.summarize`: count, acc50, acc75, miou over present objects; "absent" when there are any."""
        return summarize(self.records)

    def breakdowns(self) -> dict[str, dict[str, dict]]:
        """The summary by box size, expression length and (where rows have one) kind, over present objects."""
        present = [r for r in self.records if r["gt_box"] is not None]
        out = {"box size": breakdown(present, lambda r: size_bucket(r["gt_box"]), SIZE_ORDER),
               "expression length": breakdown(present, lambda r: length_bucket(r["text"]), LENGTH_ORDER)}
        if any("kind" in r for r in present):
            out["expression kind"] = breakdown(present, lambda r: r.get("kind"))
        return out

    def predictions(self) -> Iterator[dict[str, Any]]:
        for r in self.records:
            yield {k: r[k] for k in PREDICTION_KEYS}

    @classmethod
    def merge(cls, parts: Sequence[EvalReport]) -> EvalReport:
        """One report from every rank's (`distributed.DistributedContext.gather`): the records in dataset order,
        each of the reader's issues once (every rank reads the whole file), the slowest rank's time."""
        records = sorted((r for p in parts for r in p.records), key=lambda r: r["index"])
        seen: set[str] = set()
        issues = []
        for p in parts:
            for issue in p.issues:
                if str(issue) not in seen:
                    seen.add(str(issue))
                    issues.append(issue)
        return cls(parts[0].split, records, issues, max(p.seconds for p in parts))


def _groups(samples: Iterable[Sample], size: int) -> Iterator[list[tuple[int, Sample]]]:
    """Runs of consecutive samples of the same image, at most `size` long, with their positions."""
    group: list[tuple[int, Sample]] = []
    for i, sample in enumerate(samples):
        if group and (group[-1][1].image_key != sample.image_key or len(group) == size):
            yield group
            group = []
        group.append((i, sample))
    if group:
        yield group


def _box_outside(box: tuple[float, ...] | None, size_wh: tuple[int, int]) -> bool:
    if box is None:  # an absent object's row
        return False
    w, h, tol = *size_wh, BOX_TOLERANCE
    return box[0] < -tol or box[1] < -tol or box[2] > w + tol or box[3] > h + tol


def predict_samples(grounder: Grounder, dataset: Dataset, desc: str = "predict", rank: int = 0, world_size: int = 1,
                    progress: bool = True, limit: int | None = None
                    ) -> Iterator[tuple[int, Sample, GroundingResult]]:
    """(position in the dataset, sample, the grounder's answer) for every usable sample (this rank's share).

    Consecutive samples of one image share its backbone pass, and the descriptions of several images go to
    `grounder.predict_batch` together, up to `grounder.batch_size` of them (its answers equal `predict`'s).
    Problems (unreadable image, box outside its image, malformed rows reported by the reader) are
    recorded in `dataset.issues` and the sample is skipped; with a strict dataset they raise `DataError`.
    """
    samples: Iterable[Sample] = dataset
    if limit is not None:
        samples = (s for i, s in zip(range(limit), dataset))
    show = progress and rank == 0
    total = _share(dataset, limit, grounder.batch_size, rank, world_size) if show else None
    bar = tqdm(total=total, desc=desc, unit="sample", disable=not show, dynamic_ncols=True)
    pending: list[tuple[Any, list[tuple[int, Sample]], int]] = []  # (image, its usable samples, group size)

    def predict_pending() -> Iterator[tuple[int, Sample, GroundingResult]]:
        answers = grounder.predict_batch([(image, [s.text for _, s in kept]) for image, kept, _ in pending])
        for (_, kept, n_group), results in zip(pending, answers):
            for (i, s), r in zip(kept, results):
                yield i, s, r
            bar.update(n_group)
        pending.clear()

    for g, group in enumerate(_groups(samples, grounder.batch_size)):
        if g % world_size != rank:
            continue
        first = group[0][1]
        try:
            image = grounder.load_image(first.image)
        except ImageLoadError as exc:
            for _, s in group:
                dataset.report(_where(s), str(exc))
            bar.update(len(group))
            continue
        kept = []
        for i, s in group:
            if _box_outside(s.box, image.size):
                dataset.report(_where(s), f"box {list(s.box)} lies outside the {image.size[0]}x{image.size[1]} image")
            else:
                kept.append((i, s))
        if not kept:
            bar.update(len(group))
            continue
        if sum(len(k) for _, k, _ in pending) + len(kept) > grounder.batch_size:
            yield from predict_pending()
        pending.append((image, kept, len(group)))
    if pending:
        yield from predict_pending()
    bar.close()


def _share(dataset: Dataset, limit: int | None, batch_size: int, rank: int, world_size: int) -> int:
    """How many samples `predict_samples` goes through on `rank` (the progress bar's total): one reading pass
    over the rows, no images opened. Problems met while counting are reported again by the real pass."""
    rows = dataset if limit is None else itertools.islice(dataset, limit)
    return sum(len(group) for g, group in enumerate(_groups(rows, batch_size)) if g % world_size == rank)


def evaluate(grounder: Grounder, dataset: Dataset, split: str | None = None, rank: int = 0, world_size: int = 1,
             progress: bool = True, limit: int | None = None) -> EvalReport:
    """Predict every sample of `dataset` (this rank's share of it, see `predict_samples`) and score the
    predictions. A present object's row is a hit when the answer is found and its box has IoU >= 0.5; an
    absent object's row (`Sample.box` None) when the answer is "not found" (`found` false).
    """
    start = time.perf_counter()
    records: list[dict[str, Any]] = []
    for i, s, r in predict_samples(grounder, dataset, f"eval {split or ''}".strip(), rank, world_size, progress,
                                   limit):
        present = s.box is not None
        record = {"index": i, "id": s.id, "text": s.text, "box": list(r.box),
                  "gt_box": list(s.box) if present else None, "iou": box_iou(r.box, s.box) if present else None,
                  "score": r.score, "hit": r.found and is_hit(r.box, s.box) if present else not r.found,
                  "split": s.split if s.split is not None else split, "found": r.found}
        if "kind" in s.meta:
            record["kind"] = s.meta["kind"]
        records.append(record)
    # the reader's problems and ours, in file order (Dataset.report raises instead in strict mode)
    return EvalReport(split, records, list(dataset.issues), time.perf_counter() - start)


def _where(sample: Sample) -> str:
    line = sample.meta.get("line")
    return f"{line} ({sample.id})" if line else f"id {sample.id}"
