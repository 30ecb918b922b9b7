"""`ofa-ground eval`: Acc@0.5, Acc@0.75 and mean IoU per split, with breakdowns (sharded under torchrun, or over
--workers processes on this machine: the same shares, merged the same way)."""

from __future__ import annotations

import argparse
import json
import os
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from ..config import DEFAULT_MAX_PIXELS
from ..data import FORMATS
from ..errors import DataError
from .common import (
    EXIT_FAILED,
    EXIT_OK,
    UsageError,
    error,
    model_argument,
    pct,
    precision_arguments,
    threads_argument,
)
from .loading import load_grounder
from .workers import default_workers, start_workers, stop_workers, worker_model

# eval and calibrate (`evaluate.predict_samples`)
BATCH_SIZE_HELP = ("descriptions per model call: consecutive rows of one image share one backbone pass, and the "
                   "rows of several images are encoded and decoded together, up to N descriptions in all")


def add_parser(sub: Any) -> None:
    e = sub.add_parser("eval", help="evaluate a model on a grounding dataset",
                       description="Acc@0.5, Acc@0.75 and mean IoU per split, with breakdowns, over the rows of "
                                   "present objects; rows of absent objects (\"box\": null) count as right when "
                                   "answered 'not found' and are reported on their own line. On a CPU, runs in "
                                   "--workers processes; sharded under torchrun (e.g. torchrun --nproc_per_node 2 "
                                   "-m ofa_grounding.cli eval ...). Either way the numbers are a single process's.")
    model_argument(e)
    e.add_argument("--data", required=True, type=Path,
                   help="a .jsonl or .tsv file, a folder of <split>.jsonl files, or a REFER dataset folder")
    e.add_argument("--split", action="append", help="split(s) to evaluate (repeatable; default: all but train)")
    e.add_argument("--format", choices=FORMATS, help="dataset format (default: from the path)")
    e.add_argument("--images", type=Path, help="REFER: the COCO train2014 image folder")
    e.add_argument("--out", type=Path,
                   help="write predictions as JSONL (id, text, box, gt_box, iou, score, split, found)")
    e.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    e.add_argument("--strict", action="store_true", help="stop at the first bad sample instead of skipping it")
    e.add_argument("--limit", type=int, help="evaluate only the first N samples of each split")
    e.add_argument("--batch-size", type=int, default=8, help=BATCH_SIZE_HELP, metavar="N")
    e.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: cpu; under torchrun "
                                                  "cuda means each process's own GPU)")
    e.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="skip larger images")
    precision_arguments(e)
    threads_argument(e)
    e.add_argument("--workers", type=int, metavar="N",
                   help="evaluate in N processes on this machine, each a share of the samples with --threads threads "
                        "(default 1), the summary and --out the same as one process's (default: the idle cores on a "
                        "CPU, 1 with --device cuda; under torchrun each process is one worker)")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    e.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data import list_splits, open_dataset
    from ..distributed import distributed_context
    from ..evaluate import evaluate

    if not Path(args.data).exists():  # before the distributed setup, in our words
        raise UsageError(f"--data {args.data}: no such file or folder")
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be at least 1, got {args.limit}")
    torchrun = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if torchrun and (args.workers or 1) > 1:
        raise UsageError("--workers is for one machine without torchrun; under torchrun each process is one worker")
    ctx = distributed_context(args.device)
    if ctx.world_size > 1 and args.device and args.device.startswith("cuda"):
        args.device = f"cuda:{ctx.local_rank}"
    try:
        splits = args.split or [s for s in list_splits(args.data, args.format) if s != "train"] or [None]
        datasets = [(split, open_dataset(args.data, args.format, split, strict=args.strict, images=args.images))
                    for split in splits]
    except DataError as exc:
        raise UsageError(f"--data: {exc}") from None
    workers = args.workers if args.workers is not None else default_workers(args.device, torchrun)
    if workers > 1:
        try:
            reports = _evaluate_in_workers(args, splits, workers)
        except DataError as exc:  # --strict
            error(str(exc))
            return EXIT_FAILED
        except BrokenProcessPool:
            error("an eval worker process ended abruptly (killed, or out of memory?)")
            return EXIT_FAILED
    else:
        grounder = load_grounder(args)
        reports = []
        try:
            for split, dataset in datasets:
                report = evaluate(grounder, dataset, split, rank=ctx.rank, world_size=ctx.world_size,
                                  progress=not args.no_progress, limit=args.limit)
                reports.append(ctx.gather(report))
        except DataError as exc:  # --strict: a bad sample is a failed input (1), not bad usage
            error(str(exc))
            ctx.close()
            return EXIT_FAILED
    ctx.close()
    if not ctx.is_main:
        return EXIT_OK
    if args.out:
        with args.out.open("w", encoding="utf-8") as f:
            for report in reports:
                for row in report.predictions():
                    f.write(json.dumps(row) + "\n")
    issues = [i for r in reports for i in r.issues]
    for issue in issues:
        error(f"skipped: {issue}")
    if sum(_rows(r.summary) for r in reports) == 0:
        names = ", ".join(str(r.split) for r in reports)
        error(f"--data {args.data}: no usable samples (split {names}"
              + (f"; {len(issues)} skipped, listed above)" if issues else ")"))
        return EXIT_FAILED
    if args.json:
        splits = {str(r.split): {**r.summary, "seconds": r.seconds, "skipped": len(r.issues),
                                 "breakdowns": r.breakdowns()} for r in reports}
        print(json.dumps({"model": str(args.model or "(bundled demo)"), "data": str(args.data),
                          "processes": ctx.world_size * workers, "splits": splits}))
        return EXIT_OK
    print(_summary_table([(str(r.split), r.summary) for r in reports]))
    absent = [(str(r.split), r.summary["absent"]) for r in reports if "absent" in r.summary]
    if absent:
        print(_absent_table(absent))
    for r in reports:
        for title, groups in r.breakdowns().items():
            print(f"\n{r.split}: by {title}")
            print(_summary_table(list(groups.items()), title))
    seconds = sum(r.seconds for r in reports)
    count = sum(_rows(r.summary) for r in reports)
    print(f"\n{count} samples in {seconds:.1f} s on {ctx.world_size * workers} process(es)"
          + (f"; {len(issues)} skipped (listed on stderr)" if issues else ""))
    return EXIT_OK


def _evaluate_in_workers(args: argparse.Namespace, splits: list, workers: int) -> list:
    """Each split evaluated by `workers` processes (`workers.start_workers`), share k of it being what rank k of
    as many torchrun processes evaluates, and merged as rank 0 merges theirs (`EvalReport.merge`). This process
    runs no model."""
    from ..evaluate import EvalReport

    pool = start_workers(args, workers)
    try:
        futures = [[pool.submit(_evaluate_share, split, rank, workers) for rank in range(workers)]
                   for split in splits]
        reports = [EvalReport.merge([f.result() for f in shares]) for shares in futures]
    except BaseException:
        stop_workers(pool)
        raise
    pool.shutdown()
    return reports


def _evaluate_share(split: str | None, rank: int, world_size: int) -> Any:
    """In a worker: share `rank` of `world_size` of one split (its progress bar: share 0's)."""
    from ..data import open_dataset
    from ..evaluate import evaluate

    grounder, args = worker_model()
    dataset = open_dataset(args.data, args.format, split, strict=args.strict, images=args.images)
    return evaluate(grounder, dataset, split, rank=rank, world_size=world_size, progress=not args.no_progress,
                    limit=args.limit)


def _summary_table(rows: list[tuple[str, dict]], first: str = "split") -> str:
    width = max([len(first)] + [len(name) for name, _ in rows])
    lines = [f"{first:<{width}} {'count':>7} {'Acc@0.5':>8} {'Acc@0.75':>8} {'mIoU':>6}"]
    for name, s in rows:
        lines.append(f"{name:<{width}} {s['count']:>7} {pct(s['acc50']):>8} {pct(s['acc75']):>8} {s['miou']:6.3f}")
    return "\n".join(lines)


def _rows(summary: dict) -> int:
    return summary["count"] + summary.get("absent", {}).get("count", 0)


def _absent_table(rows: list[tuple[str, dict]]) -> str:
    """Rows of absent objects ("box": null): how many, and the share answered "not found" (the right answer)."""
    width = max([len("absent")] + [len(name) for name, _ in rows])
    lines = [f"\n{'absent':<{width}} {'count':>7} {'not found':>9}  (descriptions of objects the image lacks)"]
    for name, a in rows:
        lines.append(f"{name:<{width}} {a['count']:>7} {pct(a['not_found']):>9}")
    return "\n".join(lines)
