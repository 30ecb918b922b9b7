"""Configuration dataclasses: architecture, preprocessing and generation settings.

Field names follow the reference (`config.json` of OFA checkpoints, `configuration.json` of ModelScope
model directories) so that reading a checkpoint's configuration is a plain copy. Standard library only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

# Images with more pixels are refused from their header, before decoding (10k x 10k; decoded RGB would take
# 300 MB). The server's default is lower (serve/config.py): it decodes several requests at once.
DEFAULT_MAX_PIXELS = 100_000_000

__all__ = ["RESNET_LAYERS", "GenerationConfig", "OFAConfig", "PreprocessConfig"]

# Bottleneck blocks per stage of the 3-stage ResNet OFA uses (no layer4). "resnet18" still uses
# bottleneck blocks and "resnet34" equals "resnet50" in OFA's code; both kept for checkpoint compatibility.
RESNET_LAYERS: dict[str, tuple[int, int, int]] = {
    "resnet18": (2, 2, 2),
    "resnet34": (3, 4, 6),
    "resnet50": (3, 4, 6),
    "resnet101": (3, 4, 23),
    "resnet152": (3, 8, 36),
}


@dataclass
class OFAConfig:
    """Architecture of an OFA encoder-decoder with its ResNet backbone (names as in OFA's config.json)."""

    vocab_size: int = 59457  # 50265 BART ids + 8192 <code_i> + 1000 <bin_i>
    d_model: int = 256
    encoder_layers: int = 4
    decoder_layers: int = 4
    encoder_attention_heads: int = 4
    decoder_attention_heads: int = 4
    encoder_ffn_dim: int = 1024
    decoder_ffn_dim: int = 1024
    resnet_type: str = "resnet50"
    resnet_width: int = 64  # stem/first-stage width; OFA always uses 64 (-> 1024 output channels). Ours only.
    max_position_embeddings: int = 1024  # text/decoder position tables have this + 2 rows
    token_bucket_size: int = 256  # 1-D relative position buckets: 2 * 256 - 1 table rows
    image_bucket_size: int = 42  # 2-D image grid side; image position ids use this row stride
    attn_scale_factor: float = 2.0  # queries scaled by (head_dim * attn_scale_factor) ** -0.5
    layernorm_embedding: bool = True
    patch_layernorm_embedding: bool = True
    add_type_embedding: bool = True
    scale_embedding: bool = False  # multiply token and image embeddings by sqrt(d_model)
    normformer: bool = True
    encoder_normalize_before: bool = True
    decoder_normalize_before: bool = True
    share_attn_bias: bool = False  # True: layer 0's relative tables serve every layer
    entangle_position_embedding: bool = False  # also add raw position embeddings to the token values
    disable_entangle: bool = False  # ...except in the decoder
    use_gamma_feature: bool = False
    gamma: float = 1.0
    activation_function: str = "gelu"
    pad_token_id: int = 1
    bos_token_id: int = 0
    eos_token_id: int = 2
    # Training-only regularisation; inference ignores them (the model is always built in eval form).
    dropout: float = 0.0
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    encoder_drop_path_rate: float = 0.0
    decoder_drop_path_rate: float = 0.0
    resnet_drop_path_rate: float = 0.0

    def __post_init__(self) -> None:
        if self.resnet_type not in RESNET_LAYERS:
            raise ValueError(f"unknown resnet_type {self.resnet_type!r}; expected one of {sorted(RESNET_LAYERS)}")
        for heads in (self.encoder_attention_heads, self.decoder_attention_heads):
            if self.d_model % heads:
                raise ValueError(f"d_model {self.d_model} is not divisible by {heads} attention heads")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> OFAConfig:
        """Build from an OFA `config.json` dict; unknown keys (inert for grounding) are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class PreprocessConfig:
    """How images and texts become model inputs (from ModelScope's configuration.json `model` block)."""

    patch_image_size: int = 512  # images are resized (aspect not kept) to this square
    max_image_size: int = 512  # the box decoder scales bins by this (equal to patch_image_size in practice)
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    max_src_length: int = 256  # caption words kept, then prompt BPE tokens kept
    prompt: str = ' which region does the text " {} " describe?'
    language: str = "en"

    IMAGENET_MEAN = (0.485, 0.456, 0.406)
    IMAGENET_STD = (0.229, 0.224, 0.225)

    @classmethod
    def from_modelscope(cls, model_block: dict[str, Any]) -> PreprocessConfig:
        cfg = cls()
        cfg.patch_image_size = int(model_block.get("patch_image_size", 480))
        cfg.max_image_size = int(model_block.get("max_image_size", 512))
        if model_block.get("imagenet_default_mean_and_std", False):
            cfg.mean, cfg.std = cls.IMAGENET_MEAN, cls.IMAGENET_STD
        cfg.max_src_length = int(model_block.get("max_src_length", 256))
        if "prompt" in model_block:
            cfg.prompt = str(model_block["prompt"])
        cfg.language = str(model_block.get("language", "en"))
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in
                ("patch_image_size", "max_image_size", "mean", "std", "max_src_length", "prompt", "language")}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PreprocessConfig:
        cfg = cls(**{k: v for k, v in values.items() if k in {f.name for f in dataclasses.fields(cls)}})
        cfg.mean, cfg.std = tuple(cfg.mean), tuple(cfg.std)
        return cfg


@dataclass
class GenerationConfig:
    """Beam search settings (ModelScope's `beam_search` block plus the generator defaults it relies on)."""

    beam_size: int = 5
    max_len_a: int = 0
    max_len_b: int = 4
    min_len: int = 4
    no_repeat_ngram_size: int = 3
    # Half-open id range left open by the constraint, besides ids 0..3 which the reference never masks.
    constraint_range: tuple[int, int] | None = (58457, 59457)
    num_bins: int = 1000
    len_penalty: float = 1.0
    normalize_scores: bool = True
    temperature: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_modelscope(cls, beam_search: dict[str, Any]) -> GenerationConfig:
        cfg = cls(max_len_b=16, min_len=1, constraint_range=None)  # OfaForAllTasks' base arguments
        for key, value in beam_search.items():
            if key == "constraint_range":
                lo, hi = (int(x) for x in str(value).split(","))
                cfg.constraint_range = (lo, hi)
            elif key in {f.name for f in dataclasses.fields(cls)}:
                setattr(cfg, key, type(getattr(cls(), key))(value))
            else:
                cfg.extra[key] = value
        return cfg

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("extra")
        d["constraint_range"] = list(self.constraint_range) if self.constraint_range else None
        return d

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> GenerationConfig:
        cfg = cls(**{k: v for k, v in values.items() if k in {f.name for f in dataclasses.fields(cls)}})
        if cfg.constraint_range is not None:
            cfg.constraint_range = (int(cfg.constraint_range[0]), int(cfg.constraint_range[1]))
        return cfg
