"""`ofa-ground calibrate`: fit the confidence calibration on a labelled split, report it on held-out rows, and
(--write) store it with the model."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from ..config import DEFAULT_MAX_PIXELS
from ..data import FORMATS
from ..errors import CheckpointError, DataError
from .common import (
    EXIT_FAILED,
    EXIT_OK,
    UsageError,
    check_writable_image,
    error,
    model_argument,
    pct,
    precision_arguments,
    require_extra,
    threads_argument,
    warn,
)
from .evaluate import BATCH_SIZE_HELP
from .loading import load_grounder


def add_parser(sub: Any) -> None:
    c = sub.add_parser("calibrate", help="fit a calibrated confidence (the probability that an answer is right)",
                       description="Run the model on a labelled split, label each answer right or wrong (a box: "
                                   "IoU >= 0.5 with the true box; 'not found': the row describes an absent "
                                   "object, \"box\": null), fit the calibration (calibration.py) and report ECE, "
                                   "AUROC and a reliability table on held-out rows: --test-split, or every "
                                   "second image of --split when the data has no test split. --write stores it "
                                   "in the model directory's grounding.json, which the Grounder, the CLI, the "
                                   "server and the web page then use.")
    model_argument(c, "the bundled demo model, which --write refuses")
    c.add_argument("--data", required=True, type=Path,
                   help="a .jsonl or .tsv file, a folder of <split>.jsonl files, or a REFER dataset folder")
    c.add_argument("--split", help="the split to fit on (default: val; all rows when the data has no splits); with "
                                   "--check, the split to check")
    c.add_argument("--test-split", help="the held-out split (default: test if the data has one, else every "
                                        "second image of --split)")
    c.add_argument("--limit", type=int, help="use only the first N rows of each split")
    c.add_argument("--format", choices=FORMATS, help="dataset format (default: from the path)")
    c.add_argument("--images", type=Path, help="REFER: the COCO train2014 image folder")
    c.add_argument("--write", action="store_true",
                   help="store the calibration in MODEL/grounding.json (keeping its other keys); MODEL must be a "
                        "writable model directory (for a hub id or a .pt file: ofa-ground convert it first)")
    c.add_argument("--check", action="store_true",
                   help="fit nothing: report how the model's stored calibration holds on --split (default: test "
                        "if the data has one, else all rows), e.g. data of a seed or source it was not fitted on")
    c.add_argument("--plot", type=Path, metavar="FILE.png", help="write a reliability plot (needs the plot extra)")
    c.add_argument("--json", action="store_true", help="print the report as one JSON object")
    c.add_argument("--batch-size", type=int, default=8, help=BATCH_SIZE_HELP, metavar="N")
    c.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: cpu)")
    c.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="skip larger images")
    precision_arguments(c)
    threads_argument(c)
    c.add_argument("--no-progress", action="store_true", help="no progress bar")
    c.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    c.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data import list_splits, open_dataset

    if not args.data.exists():
        raise UsageError(f"--data {args.data}: no such file or folder")
    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit must be at least 1")
    if args.plot is not None:
        require_extra("plot", "--plot", "matplotlib")
        check_writable_image(args.plot, "--plot")
    if args.check:
        if args.write or args.test_split:
            raise UsageError(f"--check fits nothing, so it takes no {'--write' if args.write else '--test-split'}")
        return _check(args)
    if args.write:
        _check_writable_model(args.model)
    try:
        fit_split, test_split = _splits(list_splits(args.data, args.format), args.split, args.test_split)
        fit_data = open_dataset(args.data, args.format, fit_split, images=args.images)
        test_data = None if test_split is None else open_dataset(args.data, args.format, test_split,
                                                                  images=args.images)
    except DataError as exc:
        raise UsageError(f"--data: {exc}") from None
    grounder = load_grounder(args)
    fit_rows, fit_issues = _answers(grounder, fit_data, fit_split, args)
    if test_data is None:  # every second image of the fit split is held out
        images = list(dict.fromkeys(s.image_key for s, _, _ in fit_rows))
        held = set(images[1::2])
        test_rows = [row for row in fit_rows if row[0].image_key in held]
        fit_rows = [row for row in fit_rows if row[0].image_key not in held]
        test_issues: list = []
        test_name = f"{fit_split or 'all rows'} (every second image)"
    else:
        test_rows, test_issues = _answers(grounder, test_data, test_split, args)
        test_name = str(test_split)
    for issue in fit_issues + test_issues:
        error(f"skipped: {issue}")
    for rows, name in ((fit_rows, fit_split or "all rows"), (test_rows, test_name)):
        if not rows:
            error(f"--data {args.data}: no usable rows to {'fit on' if rows is fit_rows else 'test on'} "
                  f"({name})")
            return EXIT_FAILED
    report = _fit_and_report(fit_rows, test_rows, args, fit_split, test_name)
    calibration = report.pop("calibration")
    if args.write:
        from ..checkpoint import read_min_confidence, write_calibration

        threshold = read_min_confidence(Path(args.model))
        if threshold:
            warn(f"{args.model}: min_confidence {threshold} in grounding.json is now compared with the calibrated "
                 "probability (a threshold chosen on the raw confidence means little there)")
        report["written_to"] = str(write_calibration(Path(args.model), calibration))
    if args.plot is not None:
        from ..calibration import reliability_plot

        held = report.pop("_held")
        reliability_plot(held["probs"], held["raw"], held["labels"], str(args.plot),
                         title=f"{args.model or 'bundled demo model'}: {args.data} {test_name}")
        report["plot"] = str(args.plot)
    report.pop("_held", None)
    print(json.dumps(report) if args.json else _text(report))
    return EXIT_OK


def _check(args: argparse.Namespace) -> int:
    """--check: the stored calibration's ECE, AUROC and reliability on one split, nothing fitted."""
    from ..calibration import answered_not_found, reliability_table
    from ..data import list_splits, open_dataset

    try:
        named = [s for s in list_splits(args.data, args.format) if s is not None]
        split = args.split or ("test" if "test" in named else None)
        if split is not None and split not in named:
            have = f"splits: {', '.join(named)}" if named else "the data has no split labels"
            raise UsageError(f"--split {split}: no such split ({have})")
        dataset = open_dataset(args.data, args.format, split, images=args.images)
    except DataError as exc:
        raise UsageError(f"--data: {exc}") from None
    grounder = load_grounder(args)
    if grounder.calibration is None:
        raise UsageError(f"--check: {args.model or 'the bundled model'} has no calibration to check (fit one with "
                         "ofa-ground calibrate --write)")
    rows, issues = _answers(grounder, dataset, split, args)
    for issue in issues:
        error(f"skipped: {issue}")
    if not rows:
        error(f"--data {args.data}: no usable rows ({split or 'all rows'})")
        return EXIT_FAILED
    labels = [right for _, _, right in rows]
    probs = [r.confidence for _, r, _ in rows]
    raw = [r.raw_confidence for _, r, _ in rows]
    sure = [y for p, y in zip(probs, labels) if p >= 0.5]
    right_sure = [p >= 0.5 for p, y in zip(probs, labels) if y]
    checked = {"split": split or "all rows", **_quality(probs, raw, labels),
               "not_found_answers": sum(answered_not_found(r) for _, r, _ in rows),
               "at_least_half": {"answers": len(sure) / len(labels), "right": sum(sure) / len(sure) if sure else None,
                                 "of_right_answers": sum(right_sure) / len(right_sure) if right_sure else None}}
    report = {"model": str(args.model or "(bundled demo)"), "data": str(args.data), "checked": checked,
              "reliability": reliability_table(probs, labels)}
    if args.plot is not None:
        from ..calibration import reliability_plot

        reliability_plot(probs, raw, labels, str(args.plot),
                         title=f"{args.model or 'bundled demo model'}: {args.data} {checked['split']}")
        report["plot"] = str(args.plot)
    if args.json:
        print(json.dumps(report))
        return EXIT_OK
    half = checked["at_least_half"]
    lines = [f"checked on {checked['split']}: {checked['answers']} answers ({checked['not_found_answers']} not "
             f"found), {pct(checked['accuracy']).strip()} % right; the stored calibration, nothing fitted",
             f"{'':6} {'raw':>10} {'calibrated':>10}"]
    for name, key in (("ECE", "ece"), ("AUROC", "auroc")):
        values = [checked["raw_" + key], checked[key]]
        lines.append(f"{name:6} " + " ".join(f"{v:10.4f}" if v is not None else f"{'n/a':>10}" for v in values))
    lines.append(f"calibrated >= 0.5: {pct(half['answers']).strip()} % of the answers"
                 + (f", {pct(half['right']).strip()} % of them right" if half["right"] is not None else "")
                 + (f"; {pct(half['of_right_answers']).strip()} % of the right answers"
                    if half["of_right_answers"] is not None else ""))
    lines += _reliability_lines(report["reliability"], checked["split"])
    if "plot" in report:
        lines.append(f"plot: {report['plot']}")
    print("\n".join(lines))
    return EXIT_OK


def _reliability_lines(table: list[dict[str, Any]], split: str) -> list[str]:
    lines = ["", f"reliability ({split}, calibrated)", f"{'confidence':<10} {'count':>6} {'mean':>6} {'right':>6}"]
    for b in table:
        mean = f"{b['mean_probability']:6.3f}" if b["count"] else f"{'':6}"
        right = f"{b['right']:6.3f}" if b["count"] else f"{'':6}"
        lines.append(f"{b['low']:.1f}-{b['high']:.1f}    {b['count']:>6} {mean} {right}")
    return lines


def _check_writable_model(model: str | None) -> None:
    """--write, before the slow part: a model directory of the user's, writable, with a readable grounding.json."""
    from ..checkpoint import read_grounding
    from ..model_names import bundled_models, parse_model_name

    hint = "copy it into a directory first (ofa-ground convert MODEL DIR --to safetensors) and calibrate DIR"
    try:
        source = parse_model_name(model)  # None: the bundled demo model
    except CheckpointError as exc:
        raise UsageError(f"--model: {exc}") from None
    bundled = {path.resolve(): name for name, path in bundled_models().items()}
    where = source.path.resolve() if source.path is not None else None
    if where in bundled:  # by name or by path
        raise UsageError(f"--write: the bundled {bundled[where]} model is part of the installed package; {hint}")
    if not Path(model).is_dir():
        raise UsageError(f"--write: --model {model} is not a model directory (a hub id or a weights file); {hint}")
    if not os.access(model, os.W_OK):
        raise UsageError(f"--write: --model {model} is not writable; {hint}")
    try:
        read_grounding(Path(model))
    except CheckpointError as exc:
        raise UsageError(f"--write: {exc}") from None


def _splits(available: list[str | None], fit: str | None, test: str | None) -> tuple[str | None, str | None]:
    """(fit split, held-out split or None for every second image of the fit split), checked against the data's."""
    named = [s for s in available if s is not None]
    if fit is None:
        fit = "val" if "val" in named else None
        if fit is None and named:
            raise UsageError(f"--data has no val split; choose one with --split (splits: {', '.join(named)})")
    for option, split in (("--split", fit), ("--test-split", test)):
        if split is not None and split not in named:
            have = f"splits: {', '.join(named)}" if named else "the data has no split labels"
            raise UsageError(f"{option} {split}: no such split ({have})")
    if test is None and "test" in named and fit != "test":
        test = "test"
    if test is not None and test == fit:
        raise UsageError(f"--test-split {test} is the split being fitted on; choose another")
    return fit, test


def _answers(grounder: Any, dataset: Any, split: str | None, args: argparse.Namespace) -> tuple[list, list]:
    """(sample, result, right) for each usable row, and the rows skipped."""
    from ..calibration import answered_not_found
    from ..evaluate import predict_samples
    from ..metrics import is_hit

    rows = []
    for _, sample, result in predict_samples(grounder, dataset, f"calibrate {split or ''}".strip(),
                                             progress=not args.no_progress, limit=args.limit):
        if answered_not_found(result):
            right = sample.box is None
        else:
            right = sample.box is not None and is_hit(result.box, sample.box)
        rows.append((sample, result, right))
    return rows, list(dataset.issues)


def _quality(probs: list[float], raw: list[float], labels: list[bool]) -> dict[str, Any]:
    """Answers, share right, ECE and AUROC (right vs wrong; None when all are right or all wrong) of the
    calibrated and the raw confidence."""
    from ..calibration import auroc, expected_calibration_error

    def split_auroc(values: list[float]) -> float | None:
        right = [v for v, y in zip(values, labels) if y]
        wrong = [v for v, y in zip(values, labels) if not y]
        return auroc(right, wrong) if right and wrong else None

    return {"answers": len(labels), "accuracy": sum(labels) / len(labels),
            "ece": expected_calibration_error(probs, labels), "auroc": split_auroc(probs),
            "raw_ece": expected_calibration_error(raw, labels), "raw_auroc": split_auroc(raw)}


def _fit_and_report(fit_rows: list, test_rows: list, args: argparse.Namespace, fit_split: str | None,
                    test_name: str) -> dict[str, Any]:
    import datetime

    from .. import __version__
    from ..calibration import answered_not_found, fit, reliability_table

    fitted_on = {"by": f"ofa-ground calibrate (ofa-grounding {__version__})",
                 "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                 "model": str(args.model or "(bundled demo)"), "data": str(args.data), "split": fit_split,
                 "limit": args.limit, "answers": len(fit_rows)}
    calibration = fit([r for _, r, _ in fit_rows], [right for _, _, right in fit_rows], info={"fitted": fitted_on})
    labels = [right for _, _, right in test_rows]
    raw = [r.raw_confidence for _, r, _ in test_rows]
    probs = [calibration.apply(r) for _, r, _ in test_rows]
    boxes = [not answered_not_found(r) for _, r, _ in test_rows]
    sure = [y for p, y in zip(probs, labels) if p >= 0.5]
    held_out = {"split": test_name, **_quality(probs, raw, labels), "not_found_answers": boxes.count(False),
                "at_least_half": {"answers": len(sure) / len(labels), "right": sum(sure) / len(sure) if sure else None}}
    if any(boxes):
        only_boxes = ([v for v, b in zip(values, boxes) if b] for values in (probs, raw, labels))
        held_out["box_answers"] = _quality(*only_boxes)
    calibration.info["held_out"] = held_out
    return {"model": fitted_on["model"], "data": str(args.data),
            "fit": {"split": fit_split, "answers": len(fit_rows),
                    "not_found_answers": sum(answered_not_found(r) for _, r, _ in fit_rows)},
            "held_out": held_out, "reliability": reliability_table(probs, labels),
            "stored": calibration.to_json(), "calibration": calibration,
            "_held": {"probs": probs, "raw": raw, "labels": labels}}


def _text(report: dict[str, Any]) -> str:
    fit, held, stored = report["fit"], report["held_out"], report["stored"]
    n_fit, nf_fit = fit["answers"], fit["not_found_answers"]
    lines = [f"fitted on {fit['split'] or 'all rows'}: {n_fit} answers ({n_fit - nf_fit} boxes, {nf_fit} not found)"]
    for kind, name in (("box", "box answers"), ("not_found", "'not found' answers")):
        m = stored[kind]
        lines.append(f"  {name}: " + (f"logistic regression on {', '.join(m['features'])}" if m["kind"] == "logistic"
                                      else f"constant {m['probability']:.4f} ({m['reason']})"))

    def number(v: float | None) -> str:
        return f"{v:10.4f}" if v is not None else f"{'n/a':>10}"

    lines += [f"held out: {held['split']}: {held['answers']} answers ({held['not_found_answers']} not found), "
              f"{pct(held['accuracy']).strip()} % right",
              f"{'':6} {'raw':>10} {'calibrated':>10}",
              f"{'ECE':6} {number(held['raw_ece'])} {number(held['ece'])}",
              f"{'AUROC':6} {number(held['raw_auroc'])} {number(held['auroc'])}  (right vs wrong answers)"]
    if "box_answers" in held:
        b = held["box_answers"]
        lines.append(f"box answers alone ({b['answers']}, {pct(b['accuracy']).strip()} % right): ECE "
                     f"{b['raw_ece']:.4f} -> {b['ece']:.4f}, AUROC {number(b['raw_auroc']).strip()} -> "
                     f"{number(b['auroc']).strip()}")
    half = held["at_least_half"]
    lines.append(f"calibrated >= 0.5: {pct(half['answers']).strip()} % of the answers"
                 + (f", {pct(half['right']).strip()} % of them right" if half["right"] is not None else ""))
    lines += _reliability_lines(report["reliability"], held["split"])
    if "written_to" in report:
        lines.append(f"\nwritten to {report['written_to']}")
    if "plot" in report:
        lines.append(f"plot: {report['plot']}")
    return "\n".join(lines)
