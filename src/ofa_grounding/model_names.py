"""What a model name means: the one parser behind every place that takes a model (`load_model`,
`Grounder.from_pretrained`, the CLI's --model, MODEL, --student and --teacher).

A name is, in this order:
- an existing path: a model directory or weights file in any layout `checkpoint.read_checkpoint` reads;
- a bundled model's name (`bundled_models()`, e.g. `demo`): trained weights shipped in the package;
- `preset:NAME` (NAME one of `presets.list_presets()`): that architecture with fresh random weights, which only
  training starts from (`presets_allowed=True`);
- a hub id: `ORG/NAME` or `modelscope:ORG/NAME` (ModelScope), `hf:ORG/NAME` (Hugging Face).
Anything else is a one-line `CheckpointError` that lists the valid names.

Until the next release a bare preset name (`tiny`) still means the preset where presets are allowed, with a
deprecation warning, unless a bundled model has that name: then the bundled model wins (`demo` is both), and
the warning says to write `preset:demo` for random weights.

Stdlib only (no torch), so that the CLI's --help can list the names.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import CheckpointError
from .hub import is_hub_id
from .presets import list_presets

__all__ = ["BUNDLED_DIR", "DEFAULT_MODEL_NAME", "PRESET_PREFIX", "ModelSource", "bundled_models", "parse_model_name",
           "valid_names"]

log = logging.getLogger(__name__)

BUNDLED_DIR = Path(__file__).parent / "models"  # one folder per bundled model, named as the model
DEFAULT_MODEL_NAME = "demo"  # what a missing name means
PRESET_PREFIX = "preset:"


def bundled_models() -> dict[str, Path]:
    """Name -> directory of each model shipped in the package (a folder of `models/` with a config.json)."""
    if not BUNDLED_DIR.is_dir():
        return {}
    return {p.name: p for p in sorted(BUNDLED_DIR.iterdir()) if (p / "config.json").is_file()}


@dataclass(frozen=True)
class ModelSource:
    """A parsed model name. kind: "path" (an existing file or folder), "bundled", "preset" (random weights of
    the architecture `name`) or "hub" (`name` is the id as given, prefix included)."""

    kind: str
    name: str
    path: Path | None = None  # "path" and "bundled": where the files are


def parse_model_name(name: str | os.PathLike | None, presets_allowed: bool = False) -> ModelSource:
    """The source `name` refers to (see the module's docstring); None is the default bundled model.

    presets_allowed: `preset:NAME` is accepted (training); elsewhere it is an error, so that random weights
        are never loaded by accident.
    Raises `CheckpointError` (one line, listing the valid names) for a name that is none of these.
    """
    bundled = bundled_models()
    if name is None:
        if DEFAULT_MODEL_NAME not in bundled:
            raise CheckpointError(f"this installation has no bundled {DEFAULT_MODEL_NAME} model; pass a model "
                                  "directory")
        return ModelSource("bundled", DEFAULT_MODEL_NAME, bundled[DEFAULT_MODEL_NAME])
    text = str(name)
    if Path(text).exists():
        return ModelSource("path", text, Path(text))
    if text in bundled:
        if presets_allowed and text in list_presets():
            log.warning("%s is the bundled %s model (trained weights); for random weights of the %s architecture "
                        "write %s%s", text, text, text, PRESET_PREFIX, text)
        return ModelSource("bundled", text, bundled[text])
    if text.startswith(PRESET_PREFIX):
        preset = text[len(PRESET_PREFIX):]
        if preset not in list_presets():
            raise CheckpointError(f"{text}: no such preset (presets: {_presets()})")
        if not presets_allowed:
            trained = f"; for the trained {preset} model write {preset}" if preset in bundled else ""
            raise CheckpointError(f"{text} is an architecture with random weights, which only train and distill "
                                  f"start from{trained}")
        return ModelSource("preset", preset)
    if presets_allowed and text in list_presets():
        log.warning("a bare preset name (%s) is deprecated and will stop working in the next release; write "
                    "%s%s (random weights of that architecture)", text, PRESET_PREFIX, text)
        return ModelSource("preset", text)
    if is_hub_id(text):
        return ModelSource("hub", text)
    if text in list_presets():
        raise CheckpointError(f"{text}: not a bundled model but an architecture preset (random weights), which only "
                              f"train and distill start from, as {PRESET_PREFIX}{text} ({valid_names()})")
    raise CheckpointError(f"{text}: no such model directory or file, bundled model or hub id "
                          f"({valid_names(presets_allowed)})")


def valid_names(presets_allowed: bool = False) -> str:
    """The kinds of model names, for error messages and --help: bundled names, hub id forms, presets."""
    bundled = ", ".join(bundled_models()) or "none in this installation"
    text = f"bundled models: {bundled}; hub ids: ORG/NAME (ModelScope) or hf:ORG/NAME (Hugging Face)"
    return text + (f"; random weights: {_presets()}" if presets_allowed else "")


def _presets() -> str:
    return ", ".join(PRESET_PREFIX + p for p in list_presets())
