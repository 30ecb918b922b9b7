"""`load_model`: the one path from a name to a loaded model, used by the predictor, the CLI, the server,
training and distillation.

What a name means is `model_names.parse_model_name`'s to say: nothing (the bundled demo model), an existing
directory or file in any layout `checkpoint.read_checkpoint` reads, a bundled model's name (`demo`),
`preset:NAME` (fresh weights of that architecture, only where the caller asks for it: training from scratch),
or a hub id (`hub.resolve_model`: ModelScope `ORG/NAME`, Hugging Face `hf:ORG/NAME`, read from the hubs'
caches or downloaded).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint import LoadedCheckpoint, read_checkpoint
from .hub import resolve_model
from .model import OFAModel, init_weights
from .model_names import BUNDLED_DIR, DEFAULT_MODEL_NAME, PRESET_PREFIX, bundled_models, parse_model_name
from .presets import get_preset
from .tokenizer import ASSETS_DIR, OFATokenizer

__all__ = ["DEFAULT_MODEL", "PRESET_PREFIX", "bundled_models", "load_model"]

# Our demo model, trained on the synthetic benchmark and shipped in the package (its README.md there).
DEFAULT_MODEL = BUNDLED_DIR / DEFAULT_MODEL_NAME


def load_model(name_or_path: str | Path | None = None, *, dtype: torch.dtype = torch.float32,
               device: str | torch.device | None = None, cache_dir: str | Path | None = None,
               allow_preset: bool = False) -> LoadedCheckpoint:
    """The model, tokenizer and settings `name_or_path` names, with the model's parameters in `dtype` on
    `device` (a trainable `OFAModel`; `OFAModel.prepared_for_inference` makes the inference copy).

    allow_preset: `preset:NAME` gives that architecture with OFA's initialisation and the package's tokenizer
        (`layout` "preset"), and so, with a deprecation warning, does a bare preset name that is neither a path
        nor a bundled model; otherwise `preset:NAME` is an error, so that nothing yields random weights by
        accident.
    Raises `CheckpointError` (one line, naming the problem) for anything that cannot be loaded.
    """
    source = parse_model_name(name_or_path, presets_allowed=allow_preset)
    if source.kind == "preset":
        preset = get_preset(source.name)
        ckpt = LoadedCheckpoint(init_weights(OFAModel(preset.model)), OFATokenizer.default(), preset.preprocess,
                                preset.generation, Path(PRESET_PREFIX + source.name), ASSETS_DIR, layout="preset")
    elif source.path is not None:  # an existing path, or a bundled model
        ckpt = read_checkpoint(source.path)
    else:
        ckpt = read_checkpoint(resolve_model(source.name, cache_dir))
    ckpt.model.to(device=device, dtype=dtype)
    return ckpt
