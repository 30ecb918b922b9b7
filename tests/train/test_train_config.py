"""train/config.py and the flags `ofa-ground train` / `distill` build from it: one source of defaults and help."""

from __future__ import annotations

import dataclasses

import pytest

from ofa_grounding.cli import build_parser
from ofa_grounding.cli.train import training_config
from ofa_grounding.train.config import DISTILL_RECIPE, OFA_COMPRESS_KD_WEIGHT, DistillConfig, TrainConfig

REQUIRED = ["--data", "d", "--out", "o"]


def _config(*argv: str) -> TrainConfig:
    return training_config(build_parser().parse_args(list(argv)))


def test_train_flags_default_to_the_config_defaults() -> None:
    assert _config("train", "--model", "m", *REQUIRED) == TrainConfig(model="m", data="d", out="o")


def test_distill_flags_default_to_ofa_compress() -> None:
    cfg = _config("distill", "--teacher", "t", "--student", "s", *REQUIRED)
    assert cfg == TrainConfig(model="s", data="d", out="o", **DISTILL_RECIPE, distill=DistillConfig(teacher="t"))
    assert cfg.distill.kd_weight == pytest.approx(10000 / 59457) == OFA_COMPRESS_KD_WEIGHT
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.min_lr, cfg.warmup_ratio) == (5, 8, 1e-4, 1e-7, 0.01)


def test_every_setting_has_a_flag_and_reaches_the_config() -> None:
    """A value other than the default for every field, through its flag (so a field without a flag, or a flag
    that lands elsewhere, fails here)."""
    values = {"split": ("all", None), "val": ("v", "v"), "val_split": ("test", "test"), "val_limit": ("7", 7),
              "epochs": ("3", 3), "max_steps": ("9", 9), "max_minutes": ("1.5", 1.5), "stop_at_step": ("4", 4),
              "image_size": ("64", 64), "batch_size": ("6", 6), "accum": ("2", 2), "group_by_image": ("3", 3),
              "lr": ("0.1", 0.1), "min_lr": ("0.01", 0.01), "warmup_ratio": ("0.5", 0.5),
              "weight_decay": ("0.2", 0.2), "label_smoothing": ("0.3", 0.3), "clip_norm": ("2", 2.0),
              "bin_sigma": ("12", 12.0), "attr_weight": ("0.5", 0.5), "pointer_weight": ("0.25", 0.25),
              "absent_rate": ("0.1", 0.1), "smooth_bins": (None, True), "backbone_from": ("demo", "demo"),
              "heads_from": ("r/last", "r/last"),
              "drop_path": ("0.2", 0.2),
              "dropout": ("0.3", 0.3), "bf16": (None, True), "augment": ("flip,jitter", ["flip", "jitter"]),
              "log_every": ("10", 10), "eval_every": ("5", 5), "save_every": ("6", 6), "seed": ("8", 8),
              "workers": ("2", 2),
              "cache_images": (None, True), "cache_images_mb": ("512", 512), "device": ("cuda", "cuda"),
              "resume": (None, True),
              "overwrite": (None, True), "modelscope": (None, True), "progress": (None, False)}
    distill = {"kd_weight": ("0.5", 0.5), "temperature": ("2", 2.0), "attn_weight": ("0", 0.0),
               "layer_map": ("uniform", "uniform"), "attn_heads": ("mean", "mean"), "hidden_weight": ("1", 1.0),
               "teacher_cache": ("c.safetensors", "c.safetensors"), "teacher_bf16": (None, True)}
    cli_fields = {f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("cli", True)}
    assert cli_fields == {"data", "out", *values}
    assert {f.name for f in dataclasses.fields(DistillConfig)} == {"teacher", *distill}
    argv = ["distill", "--teacher", "t", "--student", "s", *REQUIRED]
    for name, (text, _) in {**values, **distill}.items():
        flag = "--no-progress" if name == "progress" else "--" + name.replace("_", "-")
        argv += [flag] if text is None else [flag, text]
    cfg = _config(*argv)
    for name, (_, expected) in values.items():
        assert getattr(cfg, name) == expected, name
    for name, (_, expected) in distill.items():
        assert getattr(cfg.distill, name) == expected, name


def test_help_comes_from_the_config() -> None:
    commands = build_parser()._subparsers._group_actions[0].choices
    for command, configs in (("train", [TrainConfig]), ("distill", [TrainConfig, DistillConfig])):
        actions = {a.dest: a for a in commands[command]._actions}
        for config in configs:
            for f in dataclasses.fields(config):
                if f.metadata.get("cli", True):
                    assert actions[f.name].help == f.metadata.get("help"), (command, f.name)
    assert "attr_weight" in actions and "kill_at_step" not in actions
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--model", "m", *REQUIRED, "--kill-at-step", "3"])


@pytest.mark.parametrize(("flags", "message"), [
    (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    (["--epochs", "0"], "--epochs must be at least 1, got 0"),
    (["--max-steps", "-5"], "--max-steps must be at least 1, got -5"),
    (["--accum", "0"], "--accum must be at least 1, got 0"),
    (["--eval-every", "0"], "--eval-every must be at least 1, got 0"),
    (["--val-limit", "0"], "--val-limit must be at least 1, got 0"),
    (["--image-size", "100"], "--image-size must be a multiple of 16"),
    (["--warmup-ratio", "2"], r"--warmup-ratio must be in \[0, 1\], got 2.0"),
    (["--label-smoothing", "1"], r"--label-smoothing must be in \[0, 1\), got 1.0"),
    (["--bin-sigma", "-1"], "--bin-sigma must not be negative, got -1.0"),
    (["--cache-images-mb", "-1"], "--cache-images-mb must not be negative, got -1"),
    (["--clip-norm", "0"], "--clip-norm must be positive, got 0.0"),
    (["--max-minutes", "0"], "--max-minutes must be positive"),
])
def test_settings_out_of_range_are_refused_before_anything_loads(flags: list[str], message: str) -> None:
    """Each used to crash (ZeroDivisionError), train nothing and exit 0, or run with a meaningless setting."""
    from ofa_grounding.train.loop import _check_settings

    with pytest.raises(ValueError, match=message):
        _check_settings(_config("train", "--model", "m", *REQUIRED, *flags))
