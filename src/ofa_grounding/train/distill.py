"""Task-specific distillation after OFA-Compress: a student learns from the task and from a teacher.

The training loop is the same (loop.py); distillation only adds a term to its loss (`DistillTerm`), per
micro-batch:

    loss = task loss (label-smoothed CE, per token)
         + kd_weight * soft cross-entropy between teacher and student over the open ids (per token)
         + attn_weight * sum over mapped layer pairs of attention_mse_sum (encoder and decoder self-attention)
         + hidden_weight * sum over mapped layer pairs of the hidden-state MSE (ours, off by default: OFA-Compress
           matches no hidden states), through a learned linear projection where the widths differ

The teacher runs in eval mode without gradients (optionally in bf16) on the same batch, each image resized and
normalised as the teacher's own preprocessing says (a teacher trained at 224 px sees 224-px images while a 128-px
student sees 128-px ones: the data gives both, `teacher_pixels`). OFA-Compress's
defaults: kd weight 10000 on a loss divided by the vocabulary size (= 0.168 per token), temperature 1,
attention weight 1, layer map "first" (student layer i <-> teacher layer i), head sums.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ..config import PreprocessConfig
from ..distributed import DistributedContext
from ..image import normalize_batch
from ..model import AttentionRecord, OFAModel
from .config import LAYER_MAPS, DistillConfig
from .data import GroundingTrainSet, collate
from .losses import attention_mse_sum, hidden_mse, kd_cross_entropy
from .terms import Forward, LossTerm, to_device

__all__ = ["DistillConfig", "DistillTerm", "Distiller", "Recording", "TeacherOutput", "build_teacher_cache",
           "layer_pairs"]


@dataclass
class Recording:
    """What one forward pass left behind: attention maps and layer outputs of the mapped layers, in pair
    order (encoder pairs, then decoder pairs)."""
    attention: list[torch.Tensor] = field(default_factory=list)
    hidden: list[torch.Tensor] = field(default_factory=list)
    attention_record: AttentionRecord | None = None  # pass it to the model's forward to fill `attention`


@dataclass
class TeacherOutput:
    logits: torch.Tensor  # (B, T, V') over the open ids, float32
    recording: Recording


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
        if cfg.hidden_weight < 0 or cfg.attn_weight < 0:
            raise ValueError("loss weights must not be negative")
        if cfg.attn_heads not in ("sum", "mean"):
            raise ValueError(f"attention head reduction must be 'sum' or 'mean', got {cfg.attn_heads!r}")
        self.cfg = cfg
        self.teacher: OFAModel | None = teacher.eval().requires_grad_(False)
        self.soft_labels: torch.Tensor | None = None  # (N, flips, T, V') fp16 from `build_teacher_cache`
        self.enc_pairs = layer_pairs(len(student.encoder.layers), len(teacher.encoder.layers), cfg.layer_map)
        self.dec_pairs = layer_pairs(len(student.decoder.layers), len(teacher.decoder.layers), cfg.layer_map)
        # One projection per matched pair, trained with the student and dropped afterwards (not saved with it).
        d_s, d_t = student.config.d_model, teacher.config.d_model
        n_pairs = len(self.enc_pairs) + len(self.dec_pairs) if cfg.hidden_weight > 0 else 0
        self.projections = nn.ModuleList(nn.Linear(d_s, d_t) if d_s != d_t else nn.Identity() for _ in range(n_pairs))
        self.projections.to(next(student.parameters()).device)

    def parameters(self) -> Iterator[nn.Parameter]:
        """The distiller's own trainable parameters (the hidden-state projections), for the optimizer."""
        return self.projections.parameters()

    def _layers(self, model: OFAModel, which: int) -> list[nn.Module]:
        return ([model.encoder.layers[pair[which]] for pair in self.enc_pairs]
                + [model.decoder.layers[pair[which]] for pair in self.dec_pairs])

    def attention_record(self, which: int) -> AttentionRecord | None:
        """What to pass as the model's `record` so that it returns the mapped layers' attention maps
        (which=0: the student's side of the pairs, 1: the teacher's), or None when attention is not matched.
        Pairs are monotonic, so execution order (encoder, then decoder layers) is pair order."""
        if self.cfg.attn_weight <= 0:
            return None
        return AttentionRecord(frozenset(pair[which] for pair in self.enc_pairs),
                               frozenset(pair[which] for pair in self.dec_pairs))

    @contextlib.contextmanager
    def recording(self, model: OFAModel, which: int) -> Iterator[Recording]:
        """Record the mapped layers' outputs (which=0: student side, 1: teacher side) with forward hooks,
        and give the `AttentionRecord` to pass to the model's forward (`Recording.attention_record`).

        The recording's lists fill during the forward pass inside the context."""
        layers = self._layers(model, which)
        record = self.attention_record(which)
        rec = Recording(hidden=[None] * len(layers) if self.cfg.hidden_weight > 0 else [],
                        attention=record.maps if record is not None else [], attention_record=record)
        hooks = []
        for k, layer in enumerate(layers if rec.hidden else []):
            hooks.append(layer.register_forward_hook(lambda _m, _i, out, k=k: rec.hidden.__setitem__(k, out)))
        try:
            yield rec
        finally:
            for h in hooks:
                h.remove()

    @torch.no_grad()
    def teacher_forward(self, batch: dict[str, torch.Tensor], vocab_ids: torch.Tensor,
                        host: dict[str, torch.Tensor] | None = None) -> TeacherOutput:
        """Teacher logits over the open ids (B, T, V') and its recorded attention maps and layer outputs
        (or, with a teacher cache, its logits read from there by sample index and flip: from `host`, the
        micro-batch on the host, when given, so that the host need not wait for the device)."""
        if self.soft_labels is not None:
            src = host if host is not None else batch
            rows = self.soft_labels[src["index"].cpu(), src["flipped"].long().cpu()]
            return TeacherOutput(to_device(rows, batch["input_ids"].device).float(), Recording())
        autocast = torch.autocast(batch["input_ids"].device.type, dtype=torch.bfloat16,
                                  enabled=self.cfg.teacher_bf16)
        with self.recording(self.teacher, 1) as rec, autocast:
            logits = self.teacher(batch["input_ids"], batch["patch_images"], batch["prev_tokens"], vocab_ids,
                                  batch.get("image_index"), record=rec.attention_record)
        rec = Recording([a.float() for a in rec.attention], [h.float() for h in rec.hidden])
        return TeacherOutput(logits.float(), rec)

    def losses(self, student_logits: torch.Tensor, student: Recording, teacher: TeacherOutput,
               input_ids: torch.Tensor, pad_id: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(soft cross-entropy summed over tokens, attention MSE summed over layer pairs, hidden-state MSE
        summed over layer pairs). Padded text positions are left out of the encoder's hidden-state MSE."""
        V = student_logits.shape[-1]
        kd = kd_cross_entropy(student_logits.reshape(-1, V), teacher.logits.reshape(-1, V), self.cfg.temperature)
        att = student_logits.new_zeros((), dtype=torch.float32)
        for s, t in zip(student.attention, teacher.recording.attention):
            att = att + attention_mse_sum(s, t, reduce_heads=self.cfg.attn_heads)
        hid = student_logits.new_zeros((), dtype=torch.float32)
        n_enc = len(self.enc_pairs)
        for k, (s, t) in enumerate(zip(student.hidden, teacher.recording.hidden)):
            mask = None
            if k < n_enc:  # encoder states: image tokens, then the text with its padding at the end
                text = input_ids.ne(pad_id)
                mask = torch.cat([text.new_ones(text.shape[0], s.shape[1] - text.shape[1]), text], dim=1)
            hid = hid + hidden_mse(s, t, self.projections[k], mask)
        return kd, att, hid


def build_teacher_cache(path: Path, distiller: Distiller, train_set: GroundingTrainSet, vocab_ids: torch.Tensor,
                        identity: dict[str, str], batch_size: int = 32, pad_id: int = 1, bos_id: int = 0,
                        flips: bool = False, teacher_preprocess: PreprocessConfig | None = None) -> torch.Tensor:
    """The teacher's logits over the open ids for every training sample (and its mirror image when `flips`),
    (N, 1 or 2, T, V') float16, read from `path` or computed once and written there.

    `identity` (teacher, data, split, ...) is stored with the file; a file made for anything else is refused.
    The teacher sees `teacher_pixels` where the samples carry them, normalised by `teacher_preprocess`.
    """
    identity = {**identity, "samples": str(len(train_set.samples)), "flips": str(int(flips)),
                "open_ids": str(len(vocab_ids)), "sample_ids": hashlib.sha256(
                    "\n".join(s.id for s in train_set.samples).encode()).hexdigest()}
    if train_set.teacher_side is not None:  # the teacher saw its own view of the images
        identity["teacher_side"] = str(train_set.teacher_side)
    if path.is_file():
        with safe_open(str(path), "pt") as f:
            stored = f.metadata() or {}
            for key, value in identity.items():
                if stored.get(key) != value:
                    raise ValueError(f"--teacher-cache {path}: made for other settings ({key}: {stored.get(key)!r}, "
                                     f"now {value!r}); delete it or give another file")
            return f.get_tensor("logits")
    teacher = distiller.teacher
    device = next(teacher.parameters()).device
    pre = teacher_preprocess or train_set.preprocess
    views = (False, True) if flips else (False,)
    n = len(train_set.samples)
    out: torch.Tensor | None = None
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=distiller.cfg.teacher_bf16)
    with torch.no_grad(), autocast:
        for v, flip in enumerate(views):
            for start in range(0, n, batch_size):
                batch = collate([train_set.item(i, flip) for i in range(start, min(n, start + batch_size))],
                                pad_id, bos_id)
                pixels = normalize_batch(batch.get("teacher_pixels", batch["pixels"]).to(device), pre.mean, pre.std)
                logits = teacher(batch["input_ids"].to(device), pixels, batch["prev_tokens"].to(device), vocab_ids)
                if out is None:
                    out = torch.empty((n, len(views), *logits.shape[1:]), dtype=torch.float16)
                out[start:start + len(logits), v] = logits.half().cpu()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"logits": out}, str(path), metadata=identity)
    return out


class DistillTerm(LossTerm):
    """Distillation as a loss term of the training loop: the teacher's pass before the student's, the student's
    attention maps and layer outputs recorded during its forward. The soft cross-entropy is per target token like
    the task loss; the attention and hidden MSEs are means per micro-batch."""

    name = "distill"

    def __init__(self, cfg: DistillConfig, teacher: OFAModel, student: OFAModel, vocab_ids: torch.Tensor,
                 pad_id: int, teacher_preprocess: PreprocessConfig) -> None:
        self.cfg, self.student, self.vocab_ids, self.pad_id = cfg, student, vocab_ids, pad_id
        self.teacher_preprocess = teacher_preprocess  # its mean and std normalise teacher_pixels
        self.distiller = Distiller(cfg, teacher, student)
        self.reset()

    def use_teacher_cache(self, ctx: DistributedContext, train_set: GroundingTrainSet, identity: dict[str, str],
                          batch_size: int, bos_id: int, augment: list[str]) -> None:
        """Read the teacher's soft labels from `cfg.teacher_cache` (rank 0 computes and writes them first when the
        file is new) instead of running the teacher at every step. `identity`: what the file must have been made
        for (teacher, data, split)."""
        if self.cfg.attn_weight > 0 or self.cfg.hidden_weight > 0:
            raise ValueError("--teacher-cache stores the teacher's soft labels only: give --attn-weight 0 and "
                             "--hidden-weight 0 with it")
        if "jitter" in augment:
            raise ValueError("--teacher-cache cannot be used with --augment jitter (random colours make every "
                             "teacher input new)")
        build = partial(build_teacher_cache, Path(self.cfg.teacher_cache), self.distiller, train_set, self.vocab_ids,
                        {**identity, "teacher_bf16": str(self.cfg.teacher_bf16)}, batch_size=batch_size,
                        pad_id=self.pad_id, bos_id=bos_id, flips="flip" in augment,
                        teacher_preprocess=self.teacher_preprocess)
        if ctx.world_size == 1:
            labels = build()
        else:
            import torch.distributed as dist

            labels = build() if ctx.is_main else None
            dist.barrier()  # the others read what rank 0 wrote
            labels = labels if labels is not None else build()
        self.distiller.soft_labels = labels
        self.distiller.teacher = None  # every soft label is in the cache: the teacher's memory is free again

    def parameters(self) -> list[nn.Parameter]:
        return list(self.distiller.parameters())

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return self.distiller.projections.state_dict()

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.distiller.projections.load_state_dict(tensors)

    def reset(self) -> None:
        self.sums = torch.zeros(3, dtype=torch.float64, device=self.vocab_ids.device)  # kd, attention, hidden

    def before_forward(self, batch: dict[str, torch.Tensor], host: dict[str, torch.Tensor]) -> None:
        if "teacher_pixels" in batch:  # the teacher's own view of the images (its side, its normalisation)
            pre = self.teacher_preprocess
            batch = {**batch, "patch_images": normalize_batch(batch["teacher_pixels"], pre.mean, pre.std)}
        self.teacher_out = self.distiller.teacher_forward(batch, self.vocab_ids, host)

    @contextlib.contextmanager
    def observing(self) -> Iterator[AttentionRecord | None]:
        with self.distiller.recording(self.student, 0) as rec:
            self.recording = rec
            yield rec.attention_record

    def __call__(self, fwd: Forward) -> list[torch.Tensor]:
        kd, attn, hidden = self.distiller.losses(fwd.logits, self.recording, self.teacher_out,
                                                 fwd.batch["input_ids"], self.pad_id)
        with torch.no_grad():
            # kd per token (divided at log time), the MSEs as means per update; divided by Python numbers,
            # since a tensor made from a list would be a copy to the device that waits for it
            self.sums += torch.stack([kd.double(), attn.double() / fwd.n_micro, hidden.double() / fwd.n_micro])
        return [self.cfg.kd_weight * kd / fwd.n_tokens,
                (self.cfg.attn_weight * attn + self.cfg.hidden_weight * hidden) / fwd.n_micro]

    def log(self, n_tokens: int, n_updates: int) -> dict[str, str]:
        kd, attn, hidden = self.sums.tolist()
        row = {"kd": f"{kd / n_tokens:.5f}", "attn": f"{attn / n_updates:.5f}"}
        if self.cfg.hidden_weight > 0:
            row["hidden"] = f"{hidden / n_updates:.5f}"
        return row
