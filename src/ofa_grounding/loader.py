"""`load_model`: the one path from a name to a loaded model, used by the predictor, the CLI, the server,
training and distillation.

A name is, in this order: nothing (the demo model shipped in the package), a local directory or file in any
layout `checkpoint.load_checkpoint` reads, a preset name (fresh weights of that architecture, only where the
caller asks for it: training from scratch), or a hub id (`hub.resolve_model`: ModelScope `ORG/NAME`, Hugging
Face `hf:ORG/NAME`, read from the hubs' caches or downloaded).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint import LoadedCheckpoint, init_weights, load_checkpoint
from .errors import CheckpointError
from .hub import resolve_model
from .model import OFAModel
from .presets import get_preset, list_presets
from .tokenizer import ASSETS_DIR, OFATokenizer

__all__ = ["DEFAULT_MODEL", "load_model"]

# Our demo model, trained on the synthetic benchmark and shipped in the package (its README.md there).
DEFAULT_MODEL = Path(__file__).parent / "models" / "demo"


def load_model(name_or_path: str | Path | None = None, *, dtype: torch.dtype = torch.float32,
               device: str | torch.device | None = None, cache_dir: str | Path | None = None,
               allow_preset: bool = False) -> LoadedCheckpoint:
    """The model, tokenizer and settings `name_or_path` names, with the model's parameters in `dtype` on
    `device` (a trainable `OFAModel`; `OFAModel.prepared_for_inference` makes the inference copy).

    allow_preset: a preset name (`list_presets()`) that is not an existing path gives that architecture with
        OFA's initialisation and the package's tokenizer (`layout` "preset"); otherwise a preset name is read
        as a path or hub id like any other name, so that a typo never silently yields random weights.
    Raises `CheckpointError` (one line, naming the problem) for anything that cannot be loaded.
    """
    if name_or_path is None:
        if not DEFAULT_MODEL.is_dir():
            raise CheckpointError("this installation has no bundled demo model; pass a model directory")
        ckpt = load_checkpoint(DEFAULT_MODEL)
    elif allow_preset and str(name_or_path) in list_presets() and not Path(name_or_path).exists():
        preset = get_preset(str(name_or_path))
        ckpt = LoadedCheckpoint(init_weights(OFAModel(preset.model)), OFATokenizer.default(), preset.preprocess,
                                preset.generation, Path(str(name_or_path)), ASSETS_DIR, layout="preset")
    else:
        ckpt = load_checkpoint(resolve_model(name_or_path, cache_dir))
    ckpt.model.to(device=device, dtype=dtype)
    return ckpt
