"""Training-only supervision of the image grid, for datasets that list every object (the synthetic benchmark).

Grounding's own loss reaches the backbone and the encoder only through four box tokens per sample, which
is too thin a signal to learn perception and reasoning from scratch. Two heads add dense signals; they
are trainer state, not part of the model, which stays plain OFA:
- `attr`: per grid cell of the image tokens *before* the encoder, the colour, shape and size class of
  the object there (or none): the backbone learns to see;
- `pointer`: per grid cell of the encoder's image tokens, which cells the described object covers: the
  encoder learns to mark the target, which the decoder then only has to read out.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import synthetic, synthetic_v2
from ..data import Sample
from .terms import Forward, LossTerm, to_device

__all__ = ["CellHeads", "CellTerm", "cell_labels", "has_cell_labels", "smooth_bin_embeddings", "vocabulary"]

NONE_SIZE = 2


def vocabulary(samples: Sequence[Sample]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The colours and shapes the cell heads name: v1's, or v2's where any sample is from the wide world
    (v2's lists start with v1's, so the ids agree)."""
    if any(s.meta.get("world") == "v2" for s in samples):
        return tuple(synthetic_v2.COLORS), synthetic_v2.SHAPES
    return tuple(synthetic.COLORS), synthetic.SHAPES


def has_cell_labels(sample: Sample) -> bool:
    return "objects" in sample.meta and "image_size" in sample.meta


def _norm_box(box: Sequence[float], w: float, h: float, flipped: bool) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = box[0] / w, box[1] / h, box[2] / w, box[3] / h
    return (1 - x1, y0, 1 - x0, y1) if flipped else (x0, y0, x1, y1)


def cell_labels(samples: Sequence[Sample], flipped: Sequence[bool], grid: int,
                absent: Sequence[bool] | None = None,
                vocab: tuple[Sequence[str], Sequence[str]] | None = None) -> dict[str, torch.Tensor]:
    """Per-cell targets of a batch on a grid x grid image grid (row-major, as the image tokens):
    colour / shape / size ids (B, P) (the "none" id where no object is), and the pointer distribution
    (B, P): the share of the target box's area in each cell (all zeros where the text describes an
    absent object: no cell holds it). `vocab`: the colours and shapes named (default: `vocabulary(samples)`)."""
    colors, shapes = vocab or vocabulary(samples)
    color_ids, shape_ids = {c: i for i, c in enumerate(colors)}, {s: i for i, s in enumerate(shapes)}
    none_color, none_shape = len(colors), len(shapes)
    B, P = len(samples), grid * grid
    color = torch.full((B, P), none_color, dtype=torch.long)
    shape = torch.full((B, P), none_shape, dtype=torch.long)
    size = torch.full((B, P), NONE_SIZE, dtype=torch.long)
    pointer = torch.zeros(B, P)
    edges = torch.arange(grid + 1, dtype=torch.float32) / grid
    centres = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid
    for b, (sample, flip) in enumerate(zip(samples, flipped)):
        w, h = sample.meta["image_size"]
        objects = sample.meta["objects"]
        boxes = [_norm_box(o["box"], w, h, flip) for o in objects]
        ids = [(color_ids[o["color"]], shape_ids[o["shape"]], int(o["size"] == "large")) for o in objects]
        # Cells whose centre an object covers (objects drawn later lie on top), then each object's own
        # centre cell, so that objects smaller than a cell are labelled too.
        for (x0, y0, x1, y1), (c, s, z) in zip(boxes, ids):
            cols = ((centres >= x0) & (centres < x1)).nonzero().flatten()
            rows = ((centres >= y0) & (centres < y1)).nonzero().flatten()
            cells = (rows[:, None] * grid + cols[None, :]).flatten()
            color[b, cells], shape[b, cells], size[b, cells] = c, s, z
        for (x0, y0, x1, y1), (c, s, z) in zip(boxes, ids):
            cell = min(int((y0 + y1) / 2 * grid), grid - 1) * grid + min(int((x0 + x1) / 2 * grid), grid - 1)
            color[b, cell], shape[b, cell], size[b, cell] = c, s, z
        if (absent is not None and absent[b]) or sample.box is None:
            continue
        x0, y0, x1, y1 = _norm_box(sample.box, w, h, flip)
        wx = (torch.minimum(edges[1:], torch.tensor(x1)) - torch.maximum(edges[:-1], torch.tensor(x0))).clamp(min=0)
        wy = (torch.minimum(edges[1:], torch.tensor(y1)) - torch.maximum(edges[:-1], torch.tensor(y0))).clamp(min=0)
        share = (wy[:, None] * wx[None, :]).flatten()
        pointer[b] = share / share.sum().clamp(min=1e-12)
    return {"color": color, "shape": shape, "size": size, "pointer": pointer}


class CellHeads(nn.Module):
    """Linear heads over grid cells; `losses` returns each term (a mean per cell or per sample) and the
    heads' accuracies (for logging)."""

    def __init__(self, d_model: int, n_colors: int = len(synthetic.COLORS), n_shapes: int = len(synthetic.SHAPES)
                 ) -> None:
        super().__init__()
        self.n_colors, self.n_shapes = n_colors, n_shapes
        self.attr_norm = nn.LayerNorm(d_model)  # image tokens before the encoder are not normalised yet
        self.attr = nn.Linear(d_model, n_colors + 1 + n_shapes + 1 + NONE_SIZE + 1)
        self.pointer = nn.Linear(d_model, 1)

    def losses(self, image_tokens: torch.Tensor, encoder_image_tokens: torch.Tensor,
               labels: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = self.attr(self.attr_norm(image_tokens))
        nc, ns = self.n_colors + 1, self.n_shapes + 1
        parts = {"color": logits[..., :nc], "shape": logits[..., nc:nc + ns], "size": logits[..., nc + ns:]}
        attr = sum(F.cross_entropy(parts[k].flatten(0, 1), labels[k].flatten()) for k in parts)
        ptr_logits = self.pointer(encoder_image_tokens).squeeze(-1)  # (B, P)
        has_target = labels["pointer"].sum(-1) > 0  # not for descriptions of absent objects
        pointer = -(labels["pointer"] * F.log_softmax(ptr_logits, -1)).sum(-1).sum() / has_target.sum().clamp(min=1)
        with torch.no_grad():
            objects = labels["color"] != self.n_colors
            hit = labels["pointer"].gather(1, ptr_logits.argmax(-1, keepdim=True)).squeeze(1) > 0
            # shares as sums over masks (equal to means over the masked cells), so the host never waits here
            stats = {f"{k}_acc": ((parts[k].argmax(-1) == labels[k]) & objects).sum().float() / objects.sum().float()
                     for k in parts}
            pointer_acc = (hit & has_target).sum().float() / has_target.sum().clamp(min=1).float()
        return {"attr": attr, "pointer": pointer, **stats, "pointer_acc": pointer_acc}


@torch.no_grad()
def smooth_bin_embeddings(model: nn.Module, bin_offset: int, num_bins: int, seed: int = 0,
                          frequencies: int = 24, std: float = 0.02) -> None:
    """Start the bin tokens' embeddings (also the output layer's rows: they are tied) as a smooth function
    of the bin index: neighbouring bins start similar, so what is learned for one bin carries to its
    neighbours."""
    u = torch.arange(num_bins, dtype=torch.float32) / (num_bins - 1)
    basis = torch.stack([torch.cos(math.pi * k * u) for k in range(1, frequencies + 1)], dim=1)
    table = model.encoder.embed_tokens.weight
    mix = torch.randn(frequencies, table.shape[1], generator=torch.Generator().manual_seed(seed))
    emb = basis @ mix
    table[bin_offset:bin_offset + num_bins] = (emb / emb.std() * std).to(table.dtype)


class CellTerm(LossTerm):
    """The cell heads as a loss term: the tensors they read are captured by forward hooks during the model's own
    forward pass (so DDP and autocast see one ordinary forward): the image tokens from `image_proj` and the
    encoder's output. Both terms are means over cells and samples, so each micro-batch weighs 1 / n_micro."""

    name = "cells"

    def __init__(self, model: nn.Module, samples: Sequence[Sample], attr_weight: float, pointer_weight: float,
                 device: torch.device) -> None:
        unlabelled = sum(not has_cell_labels(s) for s in samples)
        if unlabelled:
            raise ValueError(f"--attr-weight/--pointer-weight need every sample's objects (the synthetic benchmark's "
                             f"'objects' and 'image_size'): {unlabelled} of {len(samples)} samples have none")
        self.model, self.samples = model, samples
        self.attr_weight, self.pointer_weight = attr_weight, pointer_weight
        self.vocab = vocabulary(samples)
        self.heads = CellHeads(model.config.d_model, len(self.vocab[0]), len(self.vocab[1])).to(device)
        self.seen: dict[str, Any] = {}
        self.reset()

    def parameters(self) -> list[nn.Parameter]:
        return list(self.heads.parameters())

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return self.heads.state_dict()

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.heads.load_state_dict(tensors)

    def reset(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}

    @contextlib.contextmanager
    def observing(self) -> Iterator[None]:
        hooks = [self.model.encoder.image_proj.register_forward_hook(
                     lambda m, i, o: self.seen.__setitem__("image", o)),
                 self.model.encoder.register_forward_hook(lambda m, i, o: self.seen.__setitem__("encoder", o))]
        try:
            yield None
        finally:
            for h in hooks:
                h.remove()

    def __call__(self, fwd: Forward) -> list[torch.Tensor]:
        image = self.seen.pop("image").float()
        if "image_index" in fwd.batch:  # one backbone pass per image, labels per sample
            image = image.index_select(0, fwd.batch["image_index"])
        P = image.shape[1]
        grid = math.isqrt(P)  # training images are square (resize_square)
        if grid * grid != P:
            raise ValueError(f"cell labels need a square image grid, got {P} image tokens")
        host = fwd.host
        samples = [self.samples[j] for j in host["index"].tolist()]
        labels = cell_labels(samples, host["flipped"].tolist(), grid, host["absent"].tolist(), self.vocab)
        labels = {k: to_device(v, image.device) for k, v in labels.items()}
        terms = self.heads.losses(image, self.seen.pop("encoder").hidden[:, :P].float(), labels)
        for k, v in terms.items():
            self.sums[k] = self.sums.get(k, 0.0) + v.detach().double() / fwd.n_micro
        return [(self.attr_weight * terms["attr"] + self.pointer_weight * terms["pointer"]) / fwd.n_micro]

    def log(self, n_tokens: int, n_updates: int) -> dict[str, str]:
        names = list(self.sums)
        values = torch.stack([self.sums[k] for k in names]).tolist() if names else []
        return {k: f"{v / n_updates:.4f}" for k, v in zip(names, values)}
