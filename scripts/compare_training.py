"""Do two versions of the code train identically? Short `train`/`distill` runs with each, compared bit for bit.

    python scripts/compare_training.py OLD_SRC NEW_SRC [--work DIR]

OLD_SRC and NEW_SRC are `src` folders (e.g. of a `git worktree add /tmp/old <commit>`). Each runs the same
short trainings in fresh processes (one thread each): plain finetuning with validation, accumulation,
drop-path, dropout and augmentation; the cell heads with absent descriptions, grouping by image and soft
bins; a preset with smooth bins and bf16 autocast; distillation with hidden-state matching; distillation
from a teacher cache; a run stopped at a step; and that run resumed. Compared: log.csv (without the
samples/s column), the saved models, the trainer state (optimizer moments, RNG states, the loss terms'
parameters; trainer_state.json less the paths that name the output folder and the settings only one side
has), stdout and stderr. Exit 0 when every run matches. For refactors that must not change training.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

# name -> (command, extra arguments); every run also gets COMMON and its own --out
COMMON = ["--batch-size", "4", "--lr", "1e-3", "--seed", "5", "--no-progress", "--save-every", "3"]
RUNS = {
    "plain": ["train", "--model", "{teacher}", "--max-steps", "6", "--drop-path", "0.1", "--dropout", "0.1",
              "--augment", "flip,jitter", "--accum", "2", "--val", "{data}", "--val-limit", "4", "--eval-every", "3"],
    "cells": ["train", "--model", "{teacher}", "--max-steps", "5", "--attr-weight", "0.5", "--pointer-weight", "0.3",
              "--group-by-image", "2", "--bin-sigma", "2", "--absent-rate", "0.2", "--augment", "flip"],
    "preset": ["train", "--model", "preset:demo", "--max-steps", "3", "--smooth-bins", "--image-size", "64", "--bf16"],
    "distill": ["distill", "--teacher", "{teacher}", "--student", "{student}", "--max-steps", "4",
                "--hidden-weight", "0.5", "--accum", "2"],
    "cache": ["distill", "--teacher", "{teacher}", "--student", "{student}", "--max-steps", "4", "--attn-weight", "0",
              "--teacher-cache", "{out}.cache.safetensors", "--augment", "flip"],
    "stop": ["train", "--model", "{teacher}", "--max-steps", "6", "--stop-at-step", "4"],
}
RESUMED = ("stop", "resumed")  # a copy of the stopped run, resumed to the end

MAKE_INPUTS = """
import sys
from pathlib import Path
import torch
from ofa_grounding.checkpoint import save_checkpoint
from ofa_grounding.config import GenerationConfig, OFAConfig, PreprocessConfig
from ofa_grounding.model import OFAModel, init_weights
from ofa_grounding.synthetic import write_synthetic
from ofa_grounding.tokenizer import ASSETS_DIR

root = Path(sys.argv[1])
tiny = dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
            encoder_ffn_dim=64, decoder_ffn_dim=64, resnet_type="resnet18")
for seed, name in ((0, "teacher"), (1, "student")):
    torch.manual_seed(seed)
    model = init_weights(OFAModel(OFAConfig(**tiny)), std=0.2).eval()
    save_checkpoint(root / name, model, ASSETS_DIR, PreprocessConfig(patch_image_size=128, max_image_size=128),
                    GenerationConfig())
write_synthetic(root / "data", 48, seed=4, size=(96, 96))
"""


def run_all(src: Path, inputs: Path, out: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    out.mkdir(parents=True)

    def one(name: str, argv: list[str]) -> None:
        with (out / f"{name}.stdout").open("w") as o, (out / f"{name}.stderr").open("w") as e:
            rc = subprocess.run([sys.executable, "-m", "ofa_grounding.cli", *argv], stdout=o, stderr=e,
                                env=env).returncode
        print(f"  {name}: exit {rc}")

    fill = {"teacher": str(inputs / "teacher"), "student": str(inputs / "student"), "data": str(inputs / "data")}
    for name, argv in RUNS.items():
        argv = [a.format(**fill, out=out / name) for a in argv]
        one(name, [*argv, "--data", fill["data"], *COMMON, "--out", str(out / name)])
    source, copy = RESUMED
    shutil.copytree(out / source, out / copy)
    argv = [a.format(**fill, out=out / copy) for a in RUNS[source] if a not in ("--stop-at-step", "4")]
    one(copy, [*argv, "--data", fill["data"], *COMMON, "--out", str(out / copy), "--resume"])


def differences(a: Path, b: Path, name: str) -> list[str]:
    import torch
    from safetensors.torch import load_file

    found = []

    def rows(run: Path) -> list[list[str]]:
        return [r.split(",")[:5] + r.split(",")[6:] for r in (run / "log.csv").read_text().splitlines()]

    if rows(a / name) != rows(b / name):
        found.append("log.csv")
    for folder in ("last", "best"):
        for f in sorted((a / name / folder).glob("*.safetensors")):
            ta, tb = load_file(str(f)), load_file(str(b / name / folder / f.name))
            if ta.keys() != tb.keys() or not all(torch.equal(ta[k], tb[k]) for k in ta):
                found.append(f"{folder}/{f.name}")

    def state(root: Path) -> dict:
        s = json.loads((root / name / "last/trainer_state.json").read_text())
        return json.loads(json.dumps(s).replace(str(root), "ROOT"))

    sa, sb = state(a), state(b)
    shared = sa["config"].keys() & sb["config"].keys()  # settings one side lacks are listed, not compared
    for s in (sa, sb):
        s["config"] = {k: v for k, v in s["config"].items() if k in shared}
    if sa != sb:
        found.append("trainer_state.json")
    for stream in ("stdout", "stderr"):
        if (a / f"{name}.{stream}").read_text().replace(str(a), "ROOT") != \
                (b / f"{name}.{stream}").read_text().replace(str(b), "ROOT"):
            found.append(stream)
    return found


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("old_src", type=Path)
    ap.add_argument("new_src", type=Path)
    ap.add_argument("--work", type=Path, default=Path("compare-training"), help="folder for inputs and runs (new)")
    args = ap.parse_args()
    if args.work.exists():
        sys.exit(f"compare_training: error: --work {args.work} exists; give a new folder")
    inputs = args.work / "inputs"
    subprocess.run([sys.executable, "-c", MAKE_INPUTS, str(inputs)], check=True,
                   env={**os.environ, "PYTHONPATH": str(args.new_src.resolve())})
    for side, src in (("old", args.old_src), ("new", args.new_src)):
        print(f"{side}: {src}")
        run_all(src.resolve(), inputs, args.work / side)
    names = [*RUNS, RESUMED[1]]
    configs = [json.loads((args.work / side / "plain/last/trainer_state.json").read_text())["config"]
               for side in ("old", "new")]
    for side, mine, theirs in (("old", *configs), ("new", *configs[::-1])):
        if mine.keys() - theirs.keys():
            print(f"settings only {side} has (not compared): {', '.join(sorted(mine.keys() - theirs.keys()))}")
    failed = 0
    for name in names:
        found = differences(args.work / "old", args.work / "new", name)
        print(f"{name:8s} {'identical' if not found else 'DIFFERS: ' + ', '.join(found)}")
        failed += bool(found)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
