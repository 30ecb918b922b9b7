"""OFA's original fairseq checkpoints (`ofa_tiny.pt`, `refcoco_large_best.pt`, ...): reading them safely,
and the one table that maps their parameter names to ours (used in both directions).

A fairseq `.pt` is a pickled dict: `model` (the state dict), `cfg` (nested plain dicts: `cfg["model"]`
has the architecture, `cfg["task"]` the image size and bins) or, in older files, `args` (an
`argparse.Namespace` with both), plus optimizer and trainer state we ignore. It is read with torch's
`weights_only` unpickler, which admits tensors and plain containers, extended by an allow-list of
exactly what these files also hold (`argparse.Namespace`, numpy scalars and dtypes); anything else
(arbitrary classes, functions, OmegaConf objects) is refused with `CheckpointError` naming it.
Our names are ModelScope's / Hugging Face OFA's (the design notes, section c.2).
"""

from __future__ import annotations

import argparse
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import GenerationConfig, OFAConfig, PreprocessConfig
from .errors import CheckpointError, first_line

__all__ = ["FAIRSEQ_CONFIG_NAMES", "FAIRSEQ_LAYER_NAMES", "FAIRSEQ_ONLY_KEYS", "NORMFORMER_FLAGS",
           "config_from_fairseq", "from_fairseq_key", "read_fairseq", "to_fairseq_key"]

# Per-layer module names that differ: (stack, fairseq name, our name). Every other key is the same in both.
FAIRSEQ_LAYER_NAMES = (
    ("encoder", "attn_ln", "self_attn_mid_layer_norm"),
    ("encoder", "ffn_layernorm", "ffn_layer_norm"),
    ("decoder", "self_attn_ln", "self_attn_mid_layer_norm"),
    ("decoder", "cross_attn_ln", "cross_attn_mid_layer_norm"),
    ("decoder", "ffn_layernorm", "ffn_layer_norm"),
    ("decoder", "encoder_attn", "cross_attn"),
    ("decoder", "encoder_attn_layer_norm", "cross_attn_layer_norm"),
)
_TO_OURS = {(stack, theirs): ours for stack, theirs, ours in FAIRSEQ_LAYER_NAMES}
_TO_FAIRSEQ = {(stack, ours): theirs for stack, theirs, ours in FAIRSEQ_LAYER_NAMES}
FAIRSEQ_ONLY_KEYS = ("encoder.version", "decoder.version")  # fairseq's format markers, no weights

# Besides tensors and plain containers, the only globals a fairseq checkpoint's pickle may name: its
# argparse arguments, and numpy scalars (e.g. the best validation score) with their dtypes. numpy 2 moved
# `numpy.core` to `numpy._core`; files written under numpy 1 name the old module.
_NUMPY_SCALAR = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
_SAFE_GLOBALS = [argparse.Namespace, np.dtype, _NUMPY_SCALAR, (_NUMPY_SCALAR, "numpy.core.multiarray.scalar"),
                 *{type(np.dtype(t)) for t in ("float64", "float32", "float16", "int64", "int32", "bool")}]


def _rename(key: str, table: dict[tuple[str, str], str]) -> str:
    parts = key.split(".")
    if len(parts) > 3 and parts[1] == "layers" and (parts[0], parts[3]) in table:
        parts[3] = table[(parts[0], parts[3])]
    return ".".join(parts)


def from_fairseq_key(key: str) -> str:
    """A fairseq parameter name as ours, e.g. decoder.layers.0.encoder_attn.k_proj.weight -> ...cross_attn..."""
    return _rename(key, _TO_OURS)


def to_fairseq_key(key: str) -> str:
    """The inverse of `from_fairseq_key`."""
    return _rename(key, _TO_FAIRSEQ)


def read_fairseq(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """(state dict with our names, model settings, task settings) from a fairseq `.pt` file."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        if found:
            raise CheckpointError(f"{path}: refused to unpickle: it names {found.group(1)}, which is not a tensor, "
                                  "plain configuration or builtin (only trust such a file if you know where it "
                                  "came from)") from None
        detail = str(exc).split("WeightsUnpickler error:", 1)[-1].strip().split("\n\n")[0].strip()
        raise CheckpointError(f"{path}: cannot read as a fairseq checkpoint (not a torch pickle: "
                              f"{detail[:120] or 'unreadable'})") from None
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read as a fairseq checkpoint ({first_line(exc, typed=True)})") \
            from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise CheckpointError(f"{path}: not a fairseq checkpoint (no 'model' state dict)")
    cfg = ckpt.get("cfg")
    if isinstance(cfg, dict) and isinstance(cfg.get("model"), (dict, argparse.Namespace)):
        model_args, task_args = _as_dict(cfg["model"]), _as_dict(cfg.get("task") or {})
    elif isinstance(ckpt.get("args"), argparse.Namespace):  # pre-hydra fairseq: one flat namespace
        model_args = task_args = vars(ckpt["args"])
    else:
        raise CheckpointError(f"{path}: fairseq checkpoint without its configuration ('cfg' or 'args')")
    state = {from_fairseq_key(k): v for k, v in ckpt["model"].items()
             if k not in FAIRSEQ_ONLY_KEYS and not k.endswith("_float_tensor")}
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: the 'model' entry holds non-tensor values")
    return state, model_args, task_args


def _as_dict(section: Any) -> dict[str, Any]:
    return vars(section) if isinstance(section, argparse.Namespace) else dict(section)


# Our configuration fields and the fairseq arguments that hold them, one to one (used in both directions;
# the tests' fairseq writer uses it too). The rest is special: d_model (encoder_embed_dim = decoder_embed_dim),
# scale_embedding (stored inverted as no_scale_embedding), normformer (three scale_* flags), activation_dropout
# (relu_dropout in OFA's files), vocab_size (the embedding's rows).
FAIRSEQ_CONFIG_NAMES = (
    ("encoder_layers", "encoder_layers"), ("decoder_layers", "decoder_layers"),
    ("encoder_attention_heads", "encoder_attention_heads"), ("decoder_attention_heads", "decoder_attention_heads"),
    ("encoder_ffn_dim", "encoder_ffn_embed_dim"), ("decoder_ffn_dim", "decoder_ffn_embed_dim"),
    ("resnet_type", "resnet_type"), ("max_position_embeddings", "max_source_positions"),
    ("token_bucket_size", "token_bucket_size"), ("image_bucket_size", "image_bucket_size"),
    ("attn_scale_factor", "attn_scale_factor"), ("layernorm_embedding", "layernorm_embedding"),
    ("patch_layernorm_embedding", "patch_layernorm_embedding"), ("add_type_embedding", "add_type_embedding"),
    ("encoder_normalize_before", "encoder_normalize_before"), ("decoder_normalize_before", "decoder_normalize_before"),
    ("share_attn_bias", "share_attn_bias"), ("entangle_position_embedding", "entangle_position_embedding"),
    ("disable_entangle", "disable_entangle"), ("dropout", "dropout"), ("attention_dropout", "attention_dropout"),
    ("encoder_drop_path_rate", "encoder_drop_path_rate"), ("decoder_drop_path_rate", "decoder_drop_path_rate"),
    ("resnet_drop_path_rate", "resnet_drop_path_rate"),
)
NORMFORMER_FLAGS = ("scale_attn", "scale_fc", "scale_heads")


def config_from_fairseq(model_args: dict[str, Any], task_args: dict[str, Any], vocab_size: int
                        ) -> tuple[OFAConfig, PreprocessConfig, GenerationConfig]:
    """OFA's fairseq arguments as our configuration (design notes c.3); unknown arguments are ignored."""
    m = model_args
    if not m.get("share_decoder_input_output_embed", True) and not m.get("share_all_embeddings", True):
        raise CheckpointError("fairseq checkpoint with untied input/output embeddings; OFA ties them")
    normformer = [bool(m.get(k, True)) for k in NORMFORMER_FLAGS]
    if any(normformer) != all(normformer):
        raise CheckpointError("fairseq checkpoint with only some NormFormer scales (scale_attn/scale_fc/scale_heads)")
    values = {ours: m.get(theirs) for ours, theirs in FAIRSEQ_CONFIG_NAMES}
    values.update({
        "vocab_size": vocab_size, "d_model": int(m.get("encoder_embed_dim", 256)),
        "scale_embedding": None if "no_scale_embedding" not in m else not m["no_scale_embedding"],
        "normformer": all(normformer),
        "activation_dropout": m.get("relu_dropout", m.get("activation_dropout")),
    })
    try:
        config = OFAConfig.from_dict({k: v for k, v in values.items() if v is not None})
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"fairseq configuration does not describe an OFA model ({exc})") from None
    size = int(task_args.get("patch_image_size", 512))
    preprocess = PreprocessConfig(patch_image_size=size, max_image_size=int(task_args.get("max_image_size", 512)))
    if task_args.get("imagenet_default_mean_and_std"):
        preprocess.mean, preprocess.std = PreprocessConfig.IMAGENET_MEAN, PreprocessConfig.IMAGENET_STD
    bins = int(task_args.get("num_bins", 1000))
    generation = GenerationConfig(num_bins=bins, constraint_range=(vocab_size - bins, vocab_size))
    return config, preprocess, generation
