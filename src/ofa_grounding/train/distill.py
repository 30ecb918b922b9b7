"""Task-specific distillation after OFA-Compress: a student learns from the task and from a teacher.

The training loop is the same (loop.py); distillation only adds terms to its loss, per micro-batch:

    loss = task loss (label-smoothed CE, per token)
         + kd_weight * soft cross-entropy between teacher and student over the open ids (per token)
         + attn_weight * sum over mapped layer pairs of attention_mse_sum (encoder and decoder self-attention)

The teacher runs in eval mode without gradients (optionally in bf16) on the same batch. OFA-Compress's
defaults: kd weight 10000 on a loss divided by the vocabulary size (= 0.168 per token), temperature 1,
attention weight 1, layer map "first" (student layer i <-> teacher layer i), head sums.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from ..model import OFAModel
from .losses import OFA_COMPRESS_KD_WEIGHT, attention_mse_sum, kd_cross_entropy

__all__ = ["DistillConfig", "Distiller", "layer_pairs"]

LAYER_MAPS = ("first", "uniform")


@dataclass
class DistillConfig:
    teacher: str  # a model directory
    kd_weight: float = OFA_COMPRESS_KD_WEIGHT
    temperature: float = 1.0
    attn_weight: float = 1.0
    layer_map: str = "first"  # "first": i <-> i (OFA-Compress); "uniform": i <-> spread over the teacher's depth
    attn_heads: str = "sum"  # "sum" (OFA-Compress) or "mean" over heads before the MSE
    teacher_bf16: bool = False


def layer_pairs(student_layers: int, teacher_layers: int, how: str) -> list[tuple[int, int]]:
    """(student layer, teacher layer) pairs whose attention maps are matched."""
    if how not in LAYER_MAPS:
        raise ValueError(f"layer map must be one of {', '.join(LAYER_MAPS)}, got {how!r}")
    if student_layers > teacher_layers:
        raise ValueError(f"the student has more layers ({student_layers}) than the teacher ({teacher_layers})")
    if how == "first":
        return [(i, i) for i in range(student_layers)]
    return [(i, (i + 1) * teacher_layers // student_layers - 1) for i in range(student_layers)]


class Distiller:
    """Holds the teacher; gives the extra loss terms for one micro-batch."""

    def __init__(self, cfg: DistillConfig, teacher: OFAModel, student: OFAModel) -> None:
        if teacher.config.vocab_size != student.config.vocab_size:
            raise ValueError(f"teacher and student vocabularies differ ({teacher.config.vocab_size} vs "
                             f"{student.config.vocab_size} ids)")
        if cfg.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {cfg.temperature}")
        if cfg.attn_heads not in ("sum", "mean"):
            raise ValueError(f"attention head reduction must be 'sum' or 'mean', got {cfg.attn_heads!r}")
        self.cfg = cfg
        self.teacher = teacher.eval().requires_grad_(False)
        self.enc_pairs = layer_pairs(len(student.encoder.layers), len(teacher.encoder.layers), cfg.layer_map)
        self.dec_pairs = layer_pairs(len(student.decoder.layers), len(teacher.decoder.layers), cfg.layer_map)

    def _recorders(self, model: OFAModel, which: int) -> list:
        enc = [model.encoder.layers[pair[which]].self_attn for pair in self.enc_pairs]
        dec = [model.decoder.layers[pair[which]].self_attn for pair in self.dec_pairs]
        return enc + dec

    @contextlib.contextmanager
    def recording(self, model: OFAModel, which: int):
        """Record attention maps of the mapped layers (which=0: student side, 1: teacher side)."""
        attns = self._recorders(model, which) if self.cfg.attn_weight > 0 else []
        for a in attns:
            a.record = []
        try:
            yield attns
        finally:
            for a in attns:
                a.record = None

    @torch.no_grad()
    def teacher_forward(self, batch: dict[str, torch.Tensor], vocab_ids: torch.Tensor
                        ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Teacher logits over the open ids (B, T, V') and its recorded attention maps."""
        autocast = torch.autocast(batch["input_ids"].device.type, dtype=torch.bfloat16,
                                  enabled=self.cfg.teacher_bf16)
        with self.recording(self.teacher, 1) as attns, autocast:
            logits = self.teacher(batch["input_ids"], batch["patch_images"], batch["prev_tokens"], vocab_ids,
                                  batch.get("image_index"))
            maps = [a.record[0].float() for a in attns]
        return logits.float(), maps

    def losses(self, student_logits: torch.Tensor, student_attn: list[torch.Tensor], teacher_logits: torch.Tensor,
               teacher_attn: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(soft cross-entropy summed over tokens, attention MSE summed over layer pairs)."""
        V = student_logits.shape[-1]
        kd = kd_cross_entropy(student_logits.reshape(-1, V), teacher_logits.reshape(-1, V), self.cfg.temperature)
        att = student_logits.new_zeros((), dtype=torch.float32)
        for s, t in zip(student_attn, teacher_attn):
            att = att + attention_mse_sum(s, t, reduce_heads=self.cfg.attn_heads)
        return kd, att
