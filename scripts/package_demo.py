#!/usr/bin/env python
"""Copy a trained run into the package as a bundled model (`demo`, the default, or e.g. `demo-small`), with
float16 weights and a model card.

    python scripts/package_demo.py RUN/best --data data/v2-bench data/v1-bench [--unseen DIR ...] [--name NAME]

Saves the float16 copy (what ships), calibrates its confidence on the first --data's val split (`ofa-ground
calibrate --write`, held out on its test split, with a reliability plot), scores it on the test split of each
--data and --unseen benchmark (seeds never trained or tuned on) beside the trivial baselines, and writes the
model card (README.md): what it knows (every word of its training descriptions), what it cannot do, the
numbers, the run's training command, its samples seen and wall time.

    python scripts/package_demo.py src/ofa_grounding/models/NAME --repackage --name NAME --zoom max_share=0.35 ...

re-packages a bundled model as it is (its weights untouched, its card's Training section kept, --note added to
it): for a new second-look setting (`--zoom`), calibrated and scored again.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
STAGE1_NOTE = ("stage 1, data: `make-synthetic --n 150000 --seed 0 --per-scene 4 --simple 3`, its train split only; "
               "a scene's split depends only on its seed and index, so the benchmark's val and test scenes are never "
               "trained on")
EARLIER = "Earlier stage (the weights this run started from):"
TRAIN_KEYS = ("model", "data", "max_steps", "batch_size", "lr", "min_lr", "warmup_ratio", "dropout", "bf16", "augment",
              "bin_sigma", "attr_weight", "pointer_weight", "smooth_bins", "absent_rate", "backbone_from", "seed")


def _cli(*args: str) -> dict:
    """`ofa-ground ARGS --json`'s answer; a failure ends this script with the command's own one-line error."""
    proc = subprocess.run([sys.executable, "-m", "ofa_grounding.cli", *args, "--json", "--no-progress"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise SystemExit(f"package_demo: ofa-ground {args[0]} failed (exit {proc.returncode}): {last}")
    return json.loads(proc.stdout)


def _eval(model: Path, data: Path) -> dict:
    return _cli("eval", "--model", str(model), "--data", str(data), "--split", "test")["splits"]["test"]


def _auroc(value: float | None) -> str:
    return "undefined (all answers right or all wrong)" if value is None else f"{value:.3f}"


def _calibrate(model: Path, data: Path, plot: Path | None) -> dict:
    """Fit the confidence calibration on DATA's val split, held out on its test split; store it in MODEL."""
    if plot:
        plot.parent.mkdir(parents=True, exist_ok=True)
    return _cli("calibrate", "--model", str(model), "--data", str(data), "--split", "val", "--test-split", "test",
                "--write", *(["--plot", str(plot)] if plot else []))


def _baselines(data: Path) -> dict[str, float]:
    from ofa_grounding.synthetic import baseline_accuracies

    rows = [json.loads(line) for line in (data / "test.jsonl").open(encoding="utf-8")]
    return baseline_accuracies(rows)


def _words(table: dict | tuple) -> list[str]:
    values = table.values() if isinstance(table, dict) else [table]
    return [w for ws in values for w in ws]


def knows_section(worlds: list[str], side: int = 128, limitations: Sequence[str] = ()) -> list[str]:
    """What the model was trained on, word by word, and what it cannot do: from the worlds' vocabularies, plus
    `limitations` measured on that model (one line each)."""
    from ofa_grounding import synthetic, synthetic_v2

    tables = [synthetic.VOCABULARY if w == "v1" else synthetic_v2.VOCABULARY for w in worlds]

    def union(key: str) -> str:
        seen: list[str] = []
        for t in tables:
            seen += [w for w in _words(t.get(key, ())) if w not in seen]
        return ", ".join(seen)

    wide = "v2" in worlds
    lines = ["## What it knows", "",
             f"Trained on `make-synthetic` scenes ({' and '.join('--world ' + w for w in worlds)}; "
             "[docs/evaluation.md](../../../../docs/evaluation.md#synthetic-worlds)): flat coloured shapes on "
             + ("light, dark, gradient, textured or noisy backgrounds, canvases of any size with aspect ratios 1:3 "
                "to 3:1, shapes at any rotation, filled, striped, dotted or outlined." if wide else
                "light square canvases, upright shapes, filled, striped or dotted."),
             "The words of its training descriptions (anything else is either ignored or answered \"not found\"):",
             "",
             f"- colours: {union('colours')}",
             f"- shapes: {union('shapes')}",
             f"- sizes: {union('sizes')}",
             f"- superlatives: the {union('superlatives')} ...",
             f"- relations: ... {union('relations')} ...",
             f"- ordinals: the {union('ordinals')} ... from the left / right / top / bottom",
             f"- extremes: the {union('extremes')} ..."]
    if wide:
        lines += [f"- nouns without a shape: the red {union('generic nouns')}",
                  "- word orders: \"the circle that is red\", \"red circle\", upper case, a final full stop",
                  f"- carriers and questions: {', '.join(c.format('...') for c in synthetic_v2.CARRIERS)}",
                  "- descriptions of absent objects, answered \"not found\" (also with words it never saw, e.g. "
                  "\"the gold circle\", \"the red heart\")"]
    lines += ["", "## What it cannot do", "",
              "- Photos and real objects: it has only seen flat synthetic shapes (load one of OFA's checkpoints for "
              "photos).",
              "- Words outside the list above: an unknown word is ignored, or the answer is \"not found\".",
              f"- Tiny objects: the image is resized to {side} x {side} pixels, so an object a few pixels wide "
              f"there (e.g. under ~{round(25 * 128 / side)} px on a 640 px-wide image) is often missed.",
              "- More than one box per description (\"all the circles\"), counting, text in images, 3D scenes."]
    lines += [f"- {text}" for text in limitations]
    return lines


def _repo_path(value: str) -> str:
    """A path as the card's commands show it: relative to the repository root, where the commands run (a path
    outside it becomes `../...`), never one machine's absolute path. Names that are not absolute paths (a
    preset, a hub id, an already relative path) are kept as they are."""
    return os.path.relpath(value, ROOT) if os.path.isabs(value) else value


def _train_args(config: dict) -> list[str]:
    """The run's command line (`train`, or `distill` with the teacher and the distillation settings)."""
    distill = config.get("distill")
    out = ["ofa-ground distill", "--teacher", _repo_path(str(distill["teacher"]))] if distill else ["ofa-ground train"]
    for k in TRAIN_KEYS:
        v = config.get(k)
        if v in (None, False, [], 0, 0.0) and k not in ("model", "min_lr", "dropout"):
            continue
        if v is None:
            continue
        flag = "--student" if k == "model" and distill else "--" + k.replace("_", "-")
        if k in ("model", "data"):  # paths: repository-relative, as the commands are run
            v = _repo_path(str(v))
        out += [flag] if v is True else [flag, ",".join(v) if isinstance(v, list) else str(v)]
    return out


def _training_history(model: Path) -> str | None:
    """The Training section of a model card (a model directory's README.md, or the card file itself)."""
    card = model if model.suffix == ".md" else model / "README.md"
    if not card.is_file() or "\n## Training\n" not in (text := card.read_text(encoding="utf-8")):
        return None
    return text.split("\n## Training\n", 1)[1].strip()


def _kind_table(result: dict) -> list[str]:
    kinds = result["breakdowns"].get("expression kind", {})
    return ["| expression kind | count | Acc@0.5 (%) | Acc@0.75 (%) | mIoU |", "| --- | ---: | ---: | ---: | ---: |",
            *[f"| {k} | {v['count']} | {100 * v['acc50']:.1f} | {100 * v['acc75']:.1f} | {v['miou']:.3f} |"
              for k, v in kinds.items()]]


def zoom_settings(text: str):
    """--zoom's "max_share=0.35,min_iou=0.1" -> a Zoom (zoom.Zoom's defaults for the keys not given)."""
    from dataclasses import fields

    from ofa_grounding.zoom import Zoom

    kinds = {f.name: type(f.default) for f in fields(Zoom)}  # min_side an int, the others floats
    values: dict[str, float] = {}
    for item in filter(None, text.split(",")):
        key, _, value = (part.strip() for part in item.partition("="))
        try:
            values[key] = kinds.get(key, float)(value)  # an unknown key: Zoom.from_json names it below
        except ValueError:  # no "=" (an empty value) or not a number
            raise argparse.ArgumentTypeError(f"--zoom wants KEY=NUMBER items, got {item!r}") from None
    try:
        return Zoom.from_json(values)
    except (TypeError, ValueError) as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def zoom_sentence(zoom) -> list[str]:
    """The card's words for its second look."""
    return [f"With a second look at small answers (`grounding.json`'s `zoom`: an answer at most "
            f"{100 * zoom.max_share:g} % of the image's",
            f"width and height is looked at again in a square crop {zoom.factor:g} times its size (at least "
            f"{zoom.min_side} px), and the",
            f"box found there replaces it when the two overlap (IoU >= {zoom.min_iou:g}); `--no-zoom` or `zoom=None` "
            "turns it off).", ""]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_model", type=Path, help="the run's best/ (or last/) model directory")
    ap.add_argument("--data", type=Path, nargs="+", required=True,
                    help="benchmarks whose test splits score it (the first also calibrates: val fits, test holds out)")
    ap.add_argument("--unseen", type=Path, nargs="*", default=[], help="benchmarks of seeds never trained on")
    ap.add_argument("--worlds", default="v1,v2", help="the make-synthetic worlds it was trained on (for the card)")
    ap.add_argument("--name", default="demo", help="the bundled model's name (default demo, the default model)")
    ap.add_argument("--out", type=Path, help="where it goes (default: src/ofa_grounding/models/NAME)")
    ap.add_argument("--recipe", default="scripts/train_demo.sh", help="the script the run is part of (for the card)")
    ap.add_argument("--note", default="", help="a paragraph for the card's Training section (e.g. a table row)")
    ap.add_argument("--plot", type=Path, help="the calibration's reliability plot (default: "
                                              "docs/NAME-confidence.png)")
    ap.add_argument("--limitation", action="append", default=[],
                    help="a weakness measured on this model, for the card's What it cannot do (repeatable)")
    ap.add_argument("--machine", default="", help="where the run trained (for the card)")
    ap.add_argument("--wall-minutes", type=float, help="the run's wall time (train_demo.sh's stages.tsv has it)")
    ap.add_argument("--stage", default=STAGE1_NOTE, help="which stage of scripts/train_demo.sh the run is and its "
                    "data (for the card)")
    ap.add_argument("--earlier-card", type=Path, help="a model card whose Training section is the history before "
                    "the weights the run started from, when those have no card (e.g. the shipped model's README.md)")
    ap.add_argument("--earlier-note", default="",
                    help="text on the stages between that card and the run (for the card)")
    ap.add_argument("--mean-with", type=Path, action="append", default=[],
                    help="ship the mean of the run's weights and this model directory's, in equal shares "
                    "(scripts/average_weights.py; repeatable), as the card then says")
    ap.add_argument("--no-zoom", action="store_true", help="ship without the second look at small answers "
                    "(grounding.json's zoom, on by default; set before calibrating)")
    ap.add_argument("--zoom", type=zoom_settings, default=zoom_settings(""), metavar="KEY=VALUE,...",
                    help="the second look's settings where they differ from zoom.Zoom's defaults, e.g. "
                    "max_share=0.35,min_iou=0.1")
    ap.add_argument("--repackage", action="store_true",
                    help="run_model is a bundled model: ship its weights as they are and keep its card's Training "
                    "section (for a new --zoom), instead of a training run's")
    args = ap.parse_args()
    if args.repackage and (args.mean_with or args.earlier_card or args.earlier_note):
        ap.error("--repackage ships the model as it is: no --mean-with, --earlier-card or --earlier-note")
    args.out = args.out or ROOT / "src" / "ofa_grounding" / "models" / args.name
    args.plot = args.plot or ROOT / "docs" / f"{args.name}-confidence.png"
    if args.repackage:  # the card's Training section as it is, read before --out (often this very model) is replaced
        kept = _training_history(args.run_model)
        if kept is None:
            ap.error(f"--repackage: {args.run_model} has no model card with a Training section")
        return repackage(args, kept)
    run = args.run_model.parent
    state = json.loads((run / "last" / "trainer_state.json").read_text())
    cfg = state["config"]
    # A run started from a trained model (a later stage) keeps that model's training history on the card; read
    # it before --out (often that very model) is replaced.
    command = f"`{' '.join(_train_args(cfg))}`"
    earlier = _training_history(Path(cfg["model"]))
    if earlier is None and args.earlier_card:  # the run started from weights without a card of their own
        earlier = _training_history(args.earlier_card)
    earlier = (earlier or "").removeprefix(EARLIER).strip() or None  # the card writes the prefix once, below
    if args.earlier_note:
        earlier = f"{earlier or ''}\n\n{args.earlier_note}".strip()
    if earlier and command in earlier:  # re-packaging the run that wrote that card: keep what came before it
        earlier = earlier.split(command)[0].strip() or None
    with tempfile.TemporaryDirectory() as tmp:
        source = args.run_model
        if args.mean_with:  # a soup of runs that share a start: the mean of their weights
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from average_weights import main as average_weights

            source = Path(tmp) / "mean"
            if average_weights([str(source), str(args.run_model), *map(str, args.mean_with)]) != 0:
                return 2
        ckpt, calib = _ship(args, source, Path(tmp))
    log_rows = list(csv.DictReader((run / "log.csv").open()))
    val = [(r["step"], r["val_acc50"]) for r in log_rows if r["val_acc50"]]
    from safetensors import safe_open

    weights = args.run_model / "model.safetensors"
    with safe_open(str(weights), "pt") as f:
        shipped_step = (f.metadata() or {}).get("step", "?")
    lines = [
        *_card(args, ckpt, calib),
        *([f"{EARLIER} {earlier}", ""] if earlier else []),
        f"{command} (`{args.recipe}` {args.stage}).",
        f"The {'run' if args.mean_with else 'shipped'} weights are step {shipped_step}'s of a run of {state['step']} "
        f"updates x {cfg['batch_size']} = "
        f"{state['step'] * cfg['batch_size']:,} samples seen, "
        + (f"{args.wall_minutes:.0f} minutes of wall time" if args.wall_minutes else "wall time not recorded")
        + f"{' on ' + args.machine if args.machine else ''}."
        + (f" Validation Acc@0.5 (first {cfg['val_limit']} val samples) by step: "
           + ", ".join(f"{s}: {100 * float(a):.1f} %" for s, a in val) + "." if val else "")
        + (" What ships is the mean, in equal shares (`scripts/average_weights.py`), of these weights and "
           + " and ".join(f"`{_repo_path(str(d.resolve()))}`" for d in args.mean_with) + "." if args.mean_with else ""),
        "",
        *([args.note, ""] if args.note else []),
    ]
    return _write_card(args, lines)


def repackage(args: argparse.Namespace, training: str) -> int:
    """A bundled model shipped again as it is, with the second look of --zoom: calibrated and scored again; its
    card's Training section kept, --note added."""
    with tempfile.TemporaryDirectory() as tmp:
        ckpt, calib = _ship(args, args.run_model, Path(tmp))
    return _write_card(args, [*_card(args, ckpt, calib), training, "", *([args.note, ""] if args.note else [])])


def _write_card(args: argparse.Namespace, lines: list[str]) -> int:
    (args.out / "README.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


def _ship(args: argparse.Namespace, source: Path, tmp: Path):
    """The float16 copy of SOURCE with its second look, calibrated in TMP, then moved to --out."""
    from ofa_grounding.checkpoint import read_checkpoint, save_checkpoint, write_grounding

    ckpt = read_checkpoint(source)
    staged = tmp / "model"
    if args.repackage:  # a bundled model's files as they are (its weights byte for byte)
        shutil.copytree(source, staged)
    else:
        save_checkpoint(staged, ckpt.model, ckpt.tokenizer_dir, ckpt.preprocess, ckpt.generation,
                        metadata={"source": f"ofa-grounding {args.recipe}"}, dtype=torch.float16)
    # the second look before the calibration, which then fits the answers as they ship (an earlier
    # grounding.json's calibration goes)
    write_grounding(staged, None, None, None if args.no_zoom else args.zoom)
    calib = _calibrate(staged, args.data[0], args.plot)
    if args.out.exists():
        shutil.rmtree(args.out)
    shutil.copytree(staged, args.out)
    return ckpt, calib


def _card(args: argparse.Namespace, ckpt, calib: dict) -> list[str]:
    """The model card up to its Training section's text: what it is and knows, its scores (the test split of
    every --data and --unseen benchmark, scored now), its confidence."""
    from ofa_grounding.presets import match_preset

    results = {}
    for data in args.data:
        results[f"{data.name} (test)"] = (_eval(args.out, data), _baselines(data))
    for unseen in args.unseen:
        results[f"{unseen.name} (test, unseen seed)"] = (_eval(args.out, unseen), _baselines(unseen))
    size = (args.out / "model.safetensors").stat().st_size
    c, side = ckpt.model.config, ckpt.preprocess.patch_image_size
    n_params = sum(p.numel() for p in ckpt.model.parameters())
    lines = [
        f"# {args.name}: " + ("the default model of ofa-grounding" if args.name == "demo" else
                              "a model bundled with ofa-grounding"),
        "",
        "Trained by this project on its synthetic referring-expression scenes: flat coloured shapes and the",
        "words listed below, not real photos (for those, load one of OFA's published checkpoints). Architecture:",
        (f"the `{preset}` preset" if (preset := match_preset(c, side)) else "OFA's, in a shape of our own")
        + f" (3-stage resnet18-style backbone at width "
        f"{c.resnet_width}, d {c.d_model}, {c.encoder_attention_heads} heads, {c.encoder_layers}+{c.decoder_layers} "
        f"layers, {side} px",
        f"images, OFA's `entangle_position_embedding`, OFA's vocabulary), {n_params / 1e6:.1f} M parameters; "
        "weights stored in",
        f"float16 ({size / 1e6:.1f} MB), loaded as float32.",
        "",
        *knows_section(args.worlds.split(","), side, args.limitation),
        "",
        "## Scores (this float16 copy, test splits, beam 5)",
        "",
        *([] if args.no_zoom else zoom_sentence(args.zoom)),
        "| benchmark | samples | Acc@0.5 | Acc@0.75 | mIoU | absent: \"not found\" | best trivial baseline |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, (r, base) in results.items():
        best = max(base.items(), key=lambda kv: kv[1])
        absent = f"{100 * r['absent']['not_found']:.1f} % of {r['absent']['count']}" if "absent" in r else "-"
        lines.append(f"| {name} | {r['count']} | {100 * r['acc50']:.1f} % | {100 * r['acc75']:.1f} % | "
                     f"{r['miou']:.3f} | {absent} | {100 * best[1]:.1f} % ({best[0]}) |")
    for name, (r, _) in results.items():
        lines += ["", f"By expression kind, {name}:", "", *_kind_table(r)]
    held = calib["held_out"]
    half = held["at_least_half"]
    lines += [
        "",
        "## Confidence",
        "",
        "`confidence` is the probability that the answer is right (a box: IoU >= 0.5 with the true one; \"not",
        "found\": the object is absent), calibrated by `ofa-ground calibrate` on the val split of "
        f"`{args.data[0].name}` ({calib['fit']['answers']} answers) and stored in `grounding.json`. On its test "
        f"split ({held['answers']} answers, held out): expected calibration error {held['raw_ece']:.3f} "
        f"(raw) -> {held['ece']:.3f}, AUROC right vs wrong {_auroc(held['raw_auroc'])} -> {_auroc(held['auroc'])}; "
        f"{100 * half['answers']:.1f} % of answers at >= 0.5, {100 * (half['right'] or 0):.1f} % of those right.",
        "",
        "## Training",
        "",
    ]
    return lines


if __name__ == "__main__":
    sys.exit(main())
