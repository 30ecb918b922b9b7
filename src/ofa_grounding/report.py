"""What `ofa-ground info` reports about a loaded model: its preset, parameter counts by part, vocabulary and
settings, as one JSON-able dict (the CLI prints it as text or JSON)."""

from __future__ import annotations

from typing import Any

from .checkpoint import LoadedCheckpoint
from .presets import match_preset

__all__ = ["describe"]


def describe(ckpt: LoadedCheckpoint) -> dict[str, Any]:
    """What `ofa-ground info` prints: preset, parameter counts by part, vocabulary and settings."""
    parts = {"backbone": 0, "token embeddings": 0, "positions": 0, "encoder layers": 0, "decoder layers": 0,
             "other": 0}
    for name, p in ckpt.model.named_parameters():  # named_parameters yields a tied tensor once
        if name.startswith("encoder.embed_images."):
            part = "backbone"
        elif "embed_tokens" in name:
            part = "token embeddings"
        elif name.startswith(("encoder.layers.", "decoder.layers.")):
            part = f"{name.split('.')[0]} layers"
        elif "pos" in name:  # position tables, their LayerNorms and projections, relative-bias tables
            part = "positions"
        else:
            part = "other"
        parts[part] += p.numel()
    cfg, gen = ckpt.model.config, ckpt.generation
    return {
        "layout": ckpt.layout, "path": str(ckpt.path), "stored_dtype": ckpt.stored_dtype,
        "preset": match_preset(cfg, ckpt.preprocess.patch_image_size),
        "architecture": {k: getattr(cfg, k) for k in ("resnet_type", "d_model", "encoder_layers", "decoder_layers",
                                                      "encoder_attention_heads", "decoder_attention_heads",
                                                      "encoder_ffn_dim", "decoder_ffn_dim")},
        "parameters": {"total": sum(parts.values()), **parts},
        "vocabulary": {"size": ckpt.tokenizer.vocab_size, "bins": gen.num_bins,
                       "first_bin": ckpt.tokenizer.bin_offset},
        "preprocess": ckpt.preprocess.to_dict(), "generation": gen.to_dict(),
        "calibrated": ckpt.calibration is not None, "min_confidence": ckpt.min_confidence,
        "zoom": None if ckpt.zoom is None else ckpt.zoom.to_json(),
    }
