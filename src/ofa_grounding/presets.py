"""Named architecture presets (OFA's model card sizes), each with its preprocessing and decoding defaults.

A preset describes an architecture, not weights: `model.init_weights(OFAModel(get_preset("tiny").model))` (what
`ofa-ground train --model tiny` starts from) gives random weights of that shape. Checkpoints carry their own
`config.json`, which always wins over any preset.
"""

from __future__ import annotations

import copy
import fnmatch
from dataclasses import dataclass, field

from .config import GenerationConfig, OFAConfig, PreprocessConfig

__all__ = ["Preset", "get_preset", "list_presets", "match_preset", "register_preset"]


@dataclass
class Preset:
    name: str
    model: OFAConfig
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    description: str = ""


_PRESETS: dict[str, Preset] = {}


def register_preset(preset: Preset) -> None:
    """Add (or replace) a preset under `preset.name`."""
    _PRESETS[preset.name] = preset


def list_presets(pattern: str = "*") -> list[str]:
    """Preset names matching a shell-style pattern, sorted by model width."""
    names = [n for n in _PRESETS if fnmatch.fnmatch(n, pattern)]
    return sorted(names, key=lambda n: (_PRESETS[n].model.d_model, n))


def get_preset(name: str) -> Preset:
    """A copy of the named preset (callers may modify it freely)."""
    if name not in _PRESETS:
        raise KeyError(f"unknown preset {name!r}; known presets: {', '.join(list_presets())}")
    return copy.deepcopy(_PRESETS[name])


def match_preset(model: OFAConfig, patch_image_size: int | None = None) -> str | None:
    """The preset whose architecture (width, depth, heads, backbone, image size) a configuration has."""
    fields = ("d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads", "resnet_type", "resnet_width")
    for name in list_presets():
        preset = _PRESETS[name]
        if all(getattr(preset.model, f) == getattr(model, f) for f in fields) and \
                patch_image_size in (None, preset.preprocess.patch_image_size):
            return name
    return None


def _ofa(name: str, d: int, heads: int, enc: int, dec: int, resnet: str) -> Preset:
    model = OFAConfig(d_model=d, encoder_attention_heads=heads, decoder_attention_heads=heads,
                      encoder_layers=enc, decoder_layers=dec, encoder_ffn_dim=4 * d, decoder_ffn_dim=4 * d,
                      resnet_type=resnet)
    return Preset(name, model, description=f"OFA-{name}: {resnet} (3 stages), d {d}, {heads} heads, {enc}+{dec} layers")


# Sizes from the OFA model card (fairseq `ofa_<size>_architecture`); FFN = 4 x d everywhere.
for _p in (
    _ofa("tiny", 256, 4, 4, 4, "resnet50"),
    _ofa("medium", 512, 8, 4, 4, "resnet101"),
    _ofa("base", 768, 12, 6, 6, "resnet101"),
    _ofa("large", 1024, 16, 12, 12, "resnet152"),
    _ofa("huge", 1280, 16, 24, 12, "resnet152"),
):
    register_preset(_p)

# Ours, small enough to train on 2 CPU cores: a quarter-width 3-stage ResNet (2, 2, 2 bottleneck blocks, 256
# output channels), 224-pixel images (14 x 14 = 196 image tokens; the bundled model's stages 1-4 trained at 128,
# 5-6 at 160, 7 at 192, 10 at 224),
# d 128, 2+2 layers. Positions are entangled into
# the token values (OFA's entangle_position_embedding), so that the decoder can read where the described object
# is from what it attends to (docs/experiments/2026-12-04-demo-model.md).
register_preset(Preset(
    "demo",
    OFAConfig(d_model=128, encoder_attention_heads=4, decoder_attention_heads=4, encoder_layers=2, decoder_layers=2,
              encoder_ffn_dim=512, decoder_ffn_dim=512, resnet_type="resnet18", resnet_width=16,
              entangle_position_embedding=True),
    PreprocessConfig(patch_image_size=224, max_image_size=224),
    description="ours: resnet18-style 3-stage backbone at width 16, d 128, 4 heads, 2+2 layers, 224 px images, "
                "positions entangled"))

# Ours, a student for distillation (issue 30's `demo-small`): the demo preset's backbone (so that a trained demo
# model's ResNet can seed it, `train --backbone-from`), d 80, 2+1 layers. Single-query cost is mostly fixed per-op
# overhead at this size (docs/distillation.md), so fewer layers buy more than a narrower width.
register_preset(Preset(
    "mini",
    OFAConfig(d_model=80, encoder_attention_heads=4, decoder_attention_heads=4, encoder_layers=2, decoder_layers=1,
              encoder_ffn_dim=320, decoder_ffn_dim=320, resnet_type="resnet18", resnet_width=16,
              entangle_position_embedding=True),
    PreprocessConfig(patch_image_size=128, max_image_size=128),
    description="ours: the demo preset's backbone, d 80, 4 heads, 2+1 layers, 128 px images, positions entangled"))
