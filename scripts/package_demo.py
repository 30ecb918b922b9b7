#!/usr/bin/env python
"""Copy a trained demo run into the package as the default model, with float16 weights and a model card.

    python scripts/package_demo.py RUN/best --data data/synthetic-40k [--unseen DIR ...] [--out DIR]

Scores the float16 copy (what ships) on the benchmark's test split and on the test split of each --unseen
benchmark (seeds never trained or tuned on), beside the trivial baselines; calibrates "not found" on absent
objects (scripts/calibrate_confidence.py); writes the numbers, the run's training command, its samples
seen and wall time into the model folder's README.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
STAGE1_NOTE = ("stage 1, data: `make-synthetic --n 150000 --seed 0 --per-scene 4 --simple 3`, its train split only; "
               "a scene's split depends only on its seed and index, so the benchmark's val and test scenes are never "
               "trained on")
EARLIER = "Earlier stage (the weights this run started from):"
TRAIN_KEYS = ("model", "data", "max_steps", "batch_size", "lr", "warmup_ratio", "bf16", "augment", "bin_sigma",
              "attr_weight", "pointer_weight", "smooth_bins", "absent_rate", "seed")


def _eval(model: Path, data: Path) -> dict:
    proc = subprocess.run([sys.executable, "-m", "ofa_grounding.cli", "eval", "--model", str(model), "--data",
                           str(data), "--split", "test", "--json", "--no-progress"],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)["splits"]["test"]


def _baselines(data: Path) -> dict[str, float]:
    from ofa_grounding.synthetic import baseline_accuracies

    rows = [json.loads(line) for line in (data / "test.jsonl").open(encoding="utf-8")]
    return baseline_accuracies(rows)


def _train_args(config: dict) -> list[str]:
    out = []
    for k in TRAIN_KEYS:
        v = config.get(k)
        if v in (None, False, [], 0, 0.0) and k != "model":
            continue
        flag = "--" + k.replace("_", "-")
        if k == "model" and str(v).startswith(str(ROOT) + "/"):  # the bundled model: say it as the repo does
            v = str(v)[len(str(ROOT)) + 1:]
        out += [flag] if v is True else [flag, ",".join(v) if isinstance(v, list) else str(v)]
    return out


def _training_history(model_dir: Path) -> str | None:
    card = model_dir / "README.md"
    if not card.is_file() or "\n## Training\n" not in (text := card.read_text(encoding="utf-8")):
        return None
    return text.split("\n## Training\n", 1)[1].strip()


def _kind_table(result: dict) -> list[str]:
    kinds = result["breakdowns"].get("expression kind", {})
    return ["| expression kind | count | Acc@0.5 (%) | Acc@0.75 (%) | mIoU |", "| --- | ---: | ---: | ---: | ---: |",
            *[f"| {k} | {v['count']} | {100 * v['acc50']:.1f} | {100 * v['acc75']:.1f} | {v['miou']:.3f} |"
              for k, v in kinds.items()]]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_model", type=Path, help="the run's best/ (or last/) model directory")
    ap.add_argument("--data", type=Path, required=True, help="the synthetic benchmark (its test split scores)")
    ap.add_argument("--unseen", type=Path, nargs="*", default=[], help="benchmarks of seeds never trained on")
    ap.add_argument("--out", type=Path, default=ROOT / "src" / "ofa_grounding" / "models" / "demo")
    ap.add_argument("--machine", default="", help="where the run trained (for the card)")
    ap.add_argument("--wall-minutes", type=float, help="the run's wall time (train_demo.sh's stages.tsv has it)")
    ap.add_argument("--stage", default=STAGE1_NOTE, help="which stage of scripts/train_demo.sh the run is and its "
                    "data (for the card)")
    args = ap.parse_args()
    from ofa_grounding.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(args.run_model)
    run = args.run_model.parent
    state = json.loads((run / "last" / "trainer_state.json").read_text())
    cfg = state["config"]
    # A run started from a trained model (a later stage) keeps that model's training history on the card; read
    # it before --out (often that very model) is replaced.
    command = f"`{' '.join(['ofa-ground train', *_train_args(cfg)])}`"
    earlier = _training_history(Path(cfg["model"]))
    if earlier and command in earlier:  # re-packaging the run that wrote that card: keep what came before it
        earlier = earlier.split(command)[0].strip().removeprefix(EARLIER).strip() or None
    if args.out.exists():
        shutil.rmtree(args.out)
    save_checkpoint(args.out, ckpt.model, ckpt.tokenizer_dir, ckpt.preprocess, ckpt.generation,
                    metadata={"source": "ofa-grounding scripts/train_demo.sh"}, dtype=torch.float16)
    log_rows = list(csv.DictReader((run / "log.csv").open()))
    val = [(r["step"], r["val_acc50"]) for r in log_rows if r["val_acc50"]]
    size = (args.out / "model.safetensors").stat().st_size
    from safetensors import safe_open

    weights = next(args.run_model.glob("*.safetensors"))
    with safe_open(str(weights), "pt") as f:
        shipped_step = (f.metadata() or {}).get("step", "?")

    calib = subprocess.run([sys.executable, str(ROOT / "scripts" / "calibrate_confidence.py"), str(args.out),
                            "--data", str(args.data), "--n", "1000"], capture_output=True, text=True, check=True)
    conf = json.loads(calib.stdout)
    results = {"benchmark (seed 0)": (_eval(args.out, args.data), _baselines(args.data))}
    for unseen in args.unseen:
        results[f"unseen ({unseen.name})"] = (_eval(args.out, unseen), _baselines(unseen))

    lines = [
        "# demo: the default model of ofa-grounding",
        "",
        "Trained by this project from scratch on its synthetic referring-expression benchmark: flat coloured",
        "shapes and the words of that benchmark, not real photos (for those, load one of OFA's published",
        "checkpoints). Architecture: the `demo` preset (3-stage resnet18-style backbone at width 16, d 128, 4",
        "heads, 2+2 layers, 128 px images, OFA's `entangle_position_embedding`, OFA's vocabulary), 9.4 M",
        f"parameters; weights stored in float16 ({size / 1e6:.1f} MB), loaded as float32.",
        "",
        "## Scores (this float16 copy, test splits, beam 5)",
        "",
        "| benchmark | samples | Acc@0.5 | Acc@0.75 | mIoU | best trivial baseline |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, (r, base) in results.items():
        best = max(base.items(), key=lambda kv: kv[1])
        lines.append(f"| {name} | {r['count']} | {100 * r['acc50']:.1f} % | {100 * r['acc75']:.1f} % | "
                     f"{r['miou']:.3f} | {100 * best[1]:.1f} % ({best[0]}) |")
    for name, (r, _) in results.items():
        lines += ["", f"By expression kind, {name}:", "", *_kind_table(r)]
    t = conf["test"]
    lines += [
        "",
        "## Not found",
        "",
        "Trained with 10 % descriptions of absent objects (`train --absent-rate 0.1`), answered with the null box",
        "(`found: false`). On the benchmark's test split, "
        f"{conf['test']['positives']} descriptions of present objects and {conf['test']['negatives']} of absent "
        "ones (`scripts/calibrate_confidence.py`):",
        f"\"not found\" precision {100 * t['learned']['not_found_precision']:.1f} %, recall "
        f"{100 * t['learned']['not_found_recall']:.1f} %; present objects answered found "
        f"{100 * t['learned']['positives_found']:.1f} %.",
        f"Confidence separates hits from misses with AUROC {t['auroc_hit_vs_miss']:.3f}.",
        "",
        "## Training",
        "",
        *([f"{EARLIER} {earlier}", ""] if earlier else []),
        f"{command} (`scripts/train_demo.sh` {args.stage}).",
        f"The shipped weights are step {shipped_step}'s of a run of {state['step']} updates x {cfg['batch_size']} = "
        f"{state['step'] * cfg['batch_size']:,} samples seen, "
        + (f"{args.wall_minutes:.0f} minutes of wall time" if args.wall_minutes else "wall time not recorded")
        + f"{' on ' + args.machine if args.machine else ''}. Validation Acc@0.5 "
        f"(first {cfg['val_limit']} val samples) by step: "
        + ", ".join(f"{s}: {100 * float(a):.1f} %" for s, a in val) + ".",
        "",
    ]
    (args.out / "README.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
