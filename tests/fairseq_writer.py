"""Writing OFA's fairseq `.pt` format, for the tests that read it (the package only reads it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ofa_grounding.config import GenerationConfig, OFAConfig, PreprocessConfig
from ofa_grounding.fairseq import FAIRSEQ_CONFIG_NAMES, FAIRSEQ_ONLY_KEYS, NORMFORMER_FLAGS, to_fairseq_key


def write_fairseq(path: str | Path, state: dict[str, torch.Tensor], config: OFAConfig,
                  preprocess: PreprocessConfig, generation: GenerationConfig) -> Path:
    """Save a full OFA state dict (our names, e.g. `checkpoint.full_state_dict`) the way OFA's fairseq
    trainer does: fairseq names, version markers, `cfg` sections, optimizer and trainer state."""
    c = config
    model_args = {theirs: getattr(c, ours) for ours, theirs in FAIRSEQ_CONFIG_NAMES}
    model_args.update({
        "_name": "ofa", "arch": "ofa", "encoder_embed_dim": c.d_model, "decoder_embed_dim": c.d_model,
        "max_target_positions": c.max_position_embeddings, "no_scale_embedding": not c.scale_embedding,
        **dict.fromkeys(NORMFORMER_FLAGS, c.normformer), "relu_dropout": c.activation_dropout,
        "share_decoder_input_output_embed": True, "share_all_embeddings": True,
    })
    task_args = {"_name": "refcoco", "patch_image_size": preprocess.patch_image_size,
                 "max_image_size": preprocess.max_image_size, "num_bins": generation.num_bins,
                 "imagenet_default_mean_and_std": tuple(preprocess.mean) == PreprocessConfig.IMAGENET_MEAN}
    model = {to_fairseq_key(k): v for k, v in state.items()}
    model.update({k: torch.tensor([3.0]) for k in FAIRSEQ_ONLY_KEYS})
    ckpt = {"args": None, "cfg": {"_name": None, "model": model_args, "task": task_args,
                                  "common": {"fp16": False}, "optimization": {"lr": [3e-5]}},
            "model": model, "criterion": None,
            "optimizer_history": [{"criterion_name": "AdjustLabelSmoothedCrossEntropyCriterion",
                                   "optimizer_name": "FairseqAdam", "lr_scheduler_state": {"best": None},
                                   "num_updates": 0}],
            "task_state": {}, "extra_state": {"epoch": 1, "best": np.float64(0.0)}}
    path = Path(path)
    torch.save(ckpt, path)
    return path
