"""OFA encoder-decoder for visual grounding, read top to bottom.

Order: position buckets -> attention -> encoder layer -> decoder layer -> encoder -> decoder -> OFAModel and
its construction (`init_weights`: OFA's random initialisation; `meta_model`: no initialisation, for loading) ->
the inference interface (`GroundingModel`, which the predictor calls; `OFAModel.prepared_for_inference`).
Module and parameter names follow OFA's checkpoints (`encoder.layers.0.self_attn.q_proj.weight` ...),
so loading a ModelScope state dict is a strict copy (see checkpoint.py for the few keys it drops).

Shapes use: B samples, K beams, N = B*K decoder rows, L text tokens, P image tokens, S = P + L
encoder tokens, T decoder positions, d model width, H heads, dh = d / H.

Positions never enter the token stream; they only produce additive attention biases: an absolute term
(projected, LayerNormed position embeddings, q.k) plus learned relative tables per layer (1-D log buckets
among text tokens, 2-D buckets among image tokens). Layers are pre-norm NormFormer layers.
"""

from __future__ import annotations

import copy as _copy
import logging
import math
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .backbone import ResNet, drop_path, linear_rates
from .config import OFAConfig
from .hardware import cpu_bf16_supported

__all__ = ["DTYPES", "PRECISIONS", "AttentionRecord", "DecoderState", "EncoderOutput", "GroundingModel",
           "OFAForInference", "OFAModel", "init_weights", "meta_model"]

log = logging.getLogger(__name__)

# OFA builds its 1-D bucket tables for this many positions; the log-bucket formula uses it as a
# constant regardless of `max_position_embeddings`.
_BUCKET_MAX_POSITION = 1024
# Rows per block of the FFN at inference over many tokens (_Layer._ffn): the fastest of 128-1024 for d 256.
FFN_ROWS = 512


# --------------------------------------------------------------------------------------------------
# Relative position buckets


@lru_cache(maxsize=8)
def _token_bucket_by_offset(bucket_size: int, device: torch.device | None = None) -> torch.Tensor:
    """Bucket of every relative offset r = i - j in [-1023, 1023], stored at index r + 1023.

    Same arithmetic as OFA's `make_token_bucket_position` (float32 log, ceil): offsets within
    bucket_size/2 get their own bucket, farther ones share logarithmically wider buckets.
    """
    # Cached per device (a copy from host memory in every forward would stall a GPU's queue), and made
    # outside inference mode so that autograd may use it after an inference-mode call.
    with torch.inference_mode(False):
        rel = torch.arange(-(_BUCKET_MAX_POSITION - 1), _BUCKET_MAX_POSITION)
        sign = torch.sign(rel)
        mid = bucket_size // 2
        abs_pos = torch.where((rel < mid) & (rel > -mid), mid - 1, rel.abs())
        log_pos = torch.ceil(torch.log(abs_pos / mid) / math.log((_BUCKET_MAX_POSITION - 1) / mid) * (mid - 1)) + mid
        bucket = torch.where(abs_pos.le(mid), rel, log_pos.int() * sign).long()
        return (bucket + bucket_size - 1).to(device)


def token_rel_bucket(bucket_size: int, q_positions: torch.Tensor, k_positions: torch.Tensor) -> torch.Tensor:
    """(Tq, Tk) bucket ids for 1-D relative offsets between query and key positions."""
    rel = q_positions[:, None] - k_positions[None, :]
    return _token_bucket_by_offset(bucket_size, rel.device)[rel + _BUCKET_MAX_POSITION - 1]


@lru_cache(maxsize=16)
def image_grid_ids(bucket_size: int, h: int, w: int, device: torch.device | None = None) -> torch.Tensor:
    """Image position ids (P,) of an h x w feature grid, row-major, on `device`: id = r * bucket_size + c + 1
    (1-based, row stride `bucket_size`, not w)."""
    if h > bucket_size or w > bucket_size:
        raise ValueError(f"image feature grid {h}x{w} exceeds image_bucket_size {bucket_size}")
    with torch.inference_mode(False):  # cached: must stay usable by autograd after an inference-mode call
        return (torch.arange(h).repeat_interleave(w) * bucket_size + torch.arange(w).repeat(h) + 1).to(device)


@lru_cache(maxsize=16)
def image_grid_buckets(bucket_size: int, h: int, w: int, device: torch.device | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Image position ids (P,) and 2-D relative bucket ids (P, P) for an h x w feature grid, on `device`.

    The bucket of tokens a, b is (r_a - r_b + bucket_size - 1) * (2 * bucket_size - 1) + (c_a - c_b +
    bucket_size - 1). Only autograd needs the (P, P) table (8 MB at 512 px); inference uses a strided view
    of the small weight table instead (`_add_image_rel`).
    """
    ids = image_grid_ids(bucket_size, h, w, device)
    with torch.inference_mode(False):
        r = torch.arange(h).repeat_interleave(w)
        c = torch.arange(w).repeat(h)
        side = 2 * bucket_size - 1
        buckets = (r[:, None] - r[None, :] + bucket_size - 1) * side + (c[:, None] - c[None, :] + bucket_size - 1)
        return ids, buckets.to(device)


# --------------------------------------------------------------------------------------------------
# Attention


class Attention(nn.Module):
    """Multi-head attention with an additive bias and NormFormer per-head output scales (`c_attn`)."""

    def __init__(self, d_model: int, heads: int, scale_factor: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, d_model // heads
        self.scaling = (self.head_dim * scale_factor) ** -0.5
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.c_attn = nn.Parameter(torch.ones(heads))
        self.dropout = dropout

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.heads, self.head_dim).transpose(1, 2)  # (B, H, T, dh)

    def project_kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._split(self.k_proj(x)), self._split(self.v_proj(x))

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                probs_out: list[torch.Tensor] | None = None) -> torch.Tensor:
        """x (B, T, d) queries; k, v (B, H, Tk, dh); bias broadcastable to (B, H, T, Tk) -> (B, T, d).

        With `probs_out` (distillation) the attention probabilities (B, H, T, Tk) are computed explicitly
        instead of by the fused kernel, and appended to it."""
        B, T, d = x.shape
        q = self._split(self.q_proj(x) * self.scaling)  # scale after the bias, before the product
        if probs_out is not None:
            probs = torch.softmax((torch.matmul(q, k.transpose(2, 3)) + bias).float(), dim=-1).to(q.dtype)
            probs_out.append(probs)  # before dropout, as OFA-Compress takes them
            out = torch.matmul(F.dropout(probs, self.dropout, self.training), v)
        else:  # softmax(q.k + bias) v, fused: no (T, Tk) logits or probabilities kept in memory
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0,
                                                 dropout_p=self.dropout if self.training else 0.0)
        out = out * self.c_attn.view(1, -1, 1, 1)  # (B, H, T, dh), heads scaled
        return self.out_proj(out.transpose(1, 2).reshape(B, T, d))


# --------------------------------------------------------------------------------------------------
# Layers


class _Layer(nn.Module):
    """What encoder and decoder layers share: the NormFormer FFN and the residual branch regularisers."""

    def _init_common(self, cfg: OFAConfig, ffn_dim: int, drop_path_rate: float) -> None:
        d = cfg.d_model
        self.final_layer_norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, ffn_dim)
        self.ffn_layer_norm = nn.LayerNorm(ffn_dim)  # NormFormer: LN at FFN width after the activation
        self.fc2 = nn.Linear(ffn_dim, d)
        self.dropout, self.activation_dropout = cfg.dropout, cfg.activation_dropout
        self.drop_path_rate = drop_path_rate

    def _ffn(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        if torch.is_grad_enabled() or torch.jit.is_tracing() or len(rows) <= 2 * FFN_ROWS:
            return self._ffn_rows(x)
        # Inference over many tokens, a block of rows at a time: the (rows, ffn_dim) activations stay in the
        # CPU's cache between fc1, GELU, the LayerNorm and fc2 instead of going to memory and back (benchmarks/
        # where_time_goes.py; 7 x 1041 tokens, d 256: GELU and the LayerNorm 2.5x faster). Each row's numbers
        # are the same.
        return torch.cat([self._ffn_rows(block) for block in rows.split(FFN_ROWS)]).view_as(x)

    def _ffn_rows(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ffn_layer_norm(F.gelu(self.fc1(self.final_layer_norm(x))))
        return self.fc2(F.dropout(h, self.activation_dropout, self.training))

    def _residual(self, branch: torch.Tensor) -> torch.Tensor:
        return drop_path(F.dropout(branch, self.dropout, self.training), self.drop_path_rate, self.training)


class EncoderLayer(_Layer):
    """x += LN_mid(Attn(LN(x))); x += fc2(LN_ffn(GELU(fc1(LN(x)))))."""

    def __init__(self, cfg: OFAConfig, drop_path_rate: float) -> None:
        super().__init__()
        d = cfg.d_model
        self.self_attn = Attention(d, cfg.encoder_attention_heads, cfg.attn_scale_factor, cfg.attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.self_attn_mid_layer_norm = nn.LayerNorm(d)
        self._init_common(cfg, cfg.encoder_ffn_dim, drop_path_rate)

    def forward(self, x: torch.Tensor, bias: torch.Tensor, probs_out: list[torch.Tensor] | None = None) -> torch.Tensor:
        h = self.self_attn_layer_norm(x)
        attn = self.self_attn(h, *self.self_attn.project_kv(h), bias, probs_out)
        x = x + self._residual(self.self_attn_mid_layer_norm(attn))
        return x + self._residual(self._ffn(x))


class DecoderLayer(_Layer):
    """Self-attention (cached keys/values when decoding step by step), cross-attention, FFN."""

    def __init__(self, cfg: OFAConfig, drop_path_rate: float) -> None:
        super().__init__()
        d, heads = cfg.d_model, cfg.decoder_attention_heads
        self.self_attn = Attention(d, heads, cfg.attn_scale_factor, cfg.attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.self_attn_mid_layer_norm = nn.LayerNorm(d)
        self.cross_attn = Attention(d, heads, cfg.attn_scale_factor, cfg.attention_dropout)
        self.cross_attn_layer_norm = nn.LayerNorm(d)
        self.cross_attn_mid_layer_norm = nn.LayerNorm(d)
        self._init_common(cfg, cfg.decoder_ffn_dim, drop_path_rate)

    def forward(self, y: torch.Tensor, self_bias: torch.Tensor, cross_kv: tuple[torch.Tensor, torch.Tensor],
                cross_bias: torch.Tensor, cache: dict[str, torch.Tensor] | None = None,
                probs_out: list[torch.Tensor] | None = None) -> torch.Tensor:
        """y (N, t, d) with N = B*K rows; cross_kv (B, H, S, dh) shared by the K beams of a sample.

        With `cache`, y holds only the newest position and earlier self-attention keys/values come
        from (and are appended to) the cache. `probs_out` receives the self-attention probabilities.
        """
        h = self.self_attn_layer_norm(y)
        k, v = self.self_attn.project_kv(h)
        if cache is not None:
            if "k" in cache:
                k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        y = y + self._residual(self.self_attn_mid_layer_norm(self.self_attn(h, k, v, self_bias, probs_out)))
        N, t, d = y.shape
        B = cross_kv[0].shape[0]
        # The K beams of a sample attend to the same encoder keys: treat them as K*t queries of one row.
        h = self.cross_attn_layer_norm(y).reshape(B, N // B * t, d)
        cross = self.cross_attn(h, *cross_kv, cross_bias).reshape(N, t, d)
        y = y + self._residual(self.cross_attn_mid_layer_norm(cross))
        return y + self._residual(self._ffn(y))


# --------------------------------------------------------------------------------------------------
# Encoder


@dataclass
class EncoderOutput:
    hidden: torch.Tensor  # (B, S, d) after the final LayerNorm; image tokens first, then text
    pad_mask: torch.Tensor  # (B, S) bool, True at padding
    position: torch.Tensor  # (B, S, d) normalised position embeddings (the decoder's cross bias uses them)


@dataclass
class AttentionRecord:
    """Asks a forward pass for the self-attention probabilities (B, H, T, Tk) of some layers (distillation
    matches them): they are appended to `maps` in execution order, encoder layers before decoder layers."""

    encoder_layers: frozenset[int] = frozenset()
    decoder_layers: frozenset[int] = frozenset()
    maps: list[torch.Tensor] = field(default_factory=list)

    def encoder_out(self, i: int) -> list[torch.Tensor] | None:
        return self.maps if i in self.encoder_layers else None

    def decoder_out(self, i: int) -> list[torch.Tensor] | None:
        return self.maps if i in self.decoder_layers else None


def _gather_heads(table: nn.Embedding, buckets: torch.Tensor) -> torch.Tensor:
    """Relative bias (H, Tq, Tk) = table[buckets] per head, gathered straight into head-major layout."""
    H = table.weight.shape[1]
    return table.weight.t().index_select(1, buckets.reshape(-1)).view(H, *buckets.shape)


def _add_image_rel(base: torch.Tensor, table: torch.Tensor, bucket_size: int, grid: tuple[int, int],
                   out: torch.Tensor) -> None:
    """out = base + the image block of the relative bias; base and out are (H, P, P) views (any row stride).

    Equal to adding `_gather_heads` with `image_grid_buckets`: the bucket of tokens a, b depends only on
    (r_a - r_b, c_a - c_b), so the block is a strided view of the (H, 2s-1, 2s-1) table with the key axes
    reversed. Reversing takes a copy; made one query row of the grid at a time it stays small (0.5 MB at
    512 px) and in cache: no 17 MB temporary per layer, faster than OFA's 4M-element gather. Inference
    only (training uses the gather, whose backward is cheap).
    """
    h, w = grid
    side = 2 * bucket_size - 1
    heads = table.shape[1]
    grid_table = table[: side * side].t().contiguous()  # (H, side*side): [dr + s-1, dc + s-1] row-major
    # v[:, ra, ca, rb', cb'] = table[ra + rb' + s-h, ca + cb' + s-w] with rb' = h-1-rb, cb' = w-1-cb
    v = grid_table.as_strided((heads, h, w, h, w), (side * side, side, 1, side, 1),
                              (bucket_size - h) * side + bucket_size - w)
    base, out = base.unflatten(1, (h, w)).unflatten(-1, (h, w)), out.unflatten(1, (h, w)).unflatten(-1, (h, w))
    for r in range(h):
        torch.add(base[:, r], v[:, r].flip(-2, -1), out=out[:, r])


def _key_mask(pad_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, 1, 1, Sk) additive mask: 0 for real keys, the dtype's minimum (not -inf) for padding."""
    return torch.zeros(pad_mask.shape, dtype=dtype, device=pad_mask.device).masked_fill(
        pad_mask, torch.finfo(dtype).min)[:, None, None, :]


class Encoder(nn.Module):
    def __init__(self, cfg: OFAConfig, embed_tokens: nn.Embedding) -> None:
        super().__init__()
        d, heads = cfg.d_model, cfg.encoder_attention_heads
        self.cfg = cfg
        self.embed_tokens = embed_tokens
        self.embed_scale = math.sqrt(d) if cfg.scale_embedding else 1.0
        self.embed_images = ResNet(cfg.resnet_type, cfg.resnet_drop_path_rate, cfg.resnet_width)
        self.image_proj = nn.Linear(self.embed_images.out_channels, d)
        self.type_embedding = nn.Embedding(2, d)  # row 0 text, row 1 image
        self.layernorm_embedding = nn.LayerNorm(d)
        self.patch_layernorm_embedding = nn.LayerNorm(d)
        self.embed_positions = nn.Embedding(cfg.max_position_embeddings + 2, d)
        self.embed_image_positions = nn.Embedding(cfg.image_bucket_size ** 2 + 1, d)
        self.pos_ln = nn.LayerNorm(d)
        self.image_pos_ln = nn.LayerNorm(d)
        self.pos_q_linear = nn.Linear(d, d)
        self.pos_k_linear = nn.Linear(d, d)
        self.pos_scaling = (d / heads * cfg.attn_scale_factor) ** -0.5
        rates = linear_rates(cfg.encoder_drop_path_rate, cfg.encoder_layers)
        self.layers = nn.ModuleList(EncoderLayer(cfg, r) for r in rates)
        self.layer_norm = nn.LayerNorm(d)
        tables = 1 if cfg.share_attn_bias else cfg.encoder_layers
        self.token_rel_pos_table_list = nn.ModuleList(
            nn.Embedding(2 * cfg.token_bucket_size - 1, heads) for _ in range(tables))
        self.image_rel_pos_table_list = nn.ModuleList(
            nn.Embedding((2 * cfg.image_bucket_size - 1) ** 2 + 3, heads) for _ in range(tables))

    def embed_image(self, patch_images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, 3, H, W) pixels -> image token embeddings (B, P, d) before their LayerNorm, and the grid (h, w).

        This is the part of the encoder that depends on the image only; it can be computed once and
        reused for many texts.
        """
        feats = self.embed_images(patch_images)  # (B, 1024, h, w)
        h, w = feats.shape[-2:]
        tokens = self.image_proj(feats.flatten(2).transpose(1, 2)) * self.embed_scale  # (B, P, d), row-major
        if self.cfg.entangle_position_embedding:  # positions also in the token values (raw, before their LN)
            ids = image_grid_ids(self.cfg.image_bucket_size, h, w, tokens.device)
            tokens = tokens + self.embed_image_positions(ids)
        return tokens + self.type_embedding.weight[1], (h, w)

    def _head_bias(self, positions: torch.Tensor) -> torch.Tensor:
        """Absolute position bias (B, H, S, S) = (s * Pq(pos)) . Pk(pos)."""
        B, S, _ = positions.shape
        H = self.cfg.encoder_attention_heads
        q = self.pos_q_linear(positions).view(B, S, H, -1).transpose(1, 2) * self.pos_scaling
        k = self.pos_k_linear(positions).view(B, S, H, -1).transpose(1, 2)
        return torch.matmul(q, k.transpose(2, 3))

    def _inputs(self, input_ids: torch.Tensor, image_embeds: torch.Tensor, grid: tuple[int, int]) -> _EncoderInputs:
        """What both encoder paths start from: embedded tokens, padding and the position terms."""
        B, L = input_ids.shape
        P = image_embeds.shape[1]
        if L > self.cfg.max_position_embeddings:
            raise ValueError(f"text of {L} tokens exceeds max_position_embeddings {self.cfg.max_position_embeddings}")
        image_ids = image_grid_ids(self.cfg.image_bucket_size, *grid, input_ids.device)

        # The token table is shared with the decoder, which may stay fp32 while the encoder runs in bf16.
        text = self.embed_tokens(input_ids).to(self.type_embedding.weight.dtype) * self.embed_scale
        if self.cfg.entangle_position_embedding:
            text = text + self.embed_positions.weight[:L]
        text = text + self.type_embedding.weight[0]
        x = torch.cat([self.patch_layernorm_embedding(image_embeds), self.layernorm_embedding(text)], dim=1)
        text_pad = input_ids.eq(self.cfg.pad_token_id)
        pad_mask = torch.cat([text_pad.new_zeros(B, P), text_pad], dim=1)  # (B, S)
        # unconditionally (x 1 changes nothing): asking whether there is padding would make the host wait for a GPU
        x = x * (1 - pad_mask.unsqueeze(-1).type_as(x))

        # Positions are the same for every sample of the batch: text 0..L-1, image ids from the grid.
        text_pos = self.pos_ln(self.embed_positions.weight[:L])
        image_pos = self.image_pos_ln(self.embed_image_positions(image_ids))
        positions = torch.cat([image_pos, text_pos], dim=0).unsqueeze(0)  # (1, S, d)
        text_buckets = token_rel_bucket(self.cfg.token_bucket_size, *(torch.arange(L, device=x.device),) * 2)
        return _EncoderInputs(x, text_pad, pad_mask, positions, self._head_bias(positions), text_buckets)

    def forward(self, input_ids: torch.Tensor, image_embeds: torch.Tensor, grid: tuple[int, int],
                record: AttentionRecord | None = None) -> EncoderOutput:
        """input_ids (B, L) right-padded with pad_token_id; image_embeds (B, P, d) from `embed_image`.

        The functional path (training, ONNX export, distillation's teacher): (B, H, S, S) bias maps, padded
        batches whole through each layer. `infer` computes the same faster, without autograd."""
        B, L = input_ids.shape
        P = image_embeds.shape[1]
        inp = self._inputs(input_ids, image_embeds, grid)
        x = inp.x
        # bias = absolute + relative, summed before it meets the logits (as the reference does); relative
        # terms only within the image block and within the text block.
        _, image_buckets = image_grid_buckets(self.cfg.image_bucket_size, *grid, input_ids.device)
        key_mask = _key_mask(inp.pad_mask, x.dtype)  # zeros without padding: the same logits, and no host sync
        for i, layer in enumerate(self.layers):
            t = 0 if self.cfg.share_attn_bias else i
            text_rel = _gather_heads(self.token_rel_pos_table_list[t], inp.text_buckets)
            image_rel = _gather_heads(self.image_rel_pos_table_list[t], image_buckets)
            rel = torch.cat([F.pad(image_rel, (0, L)), F.pad(text_rel, (P, 0))], dim=-2)  # (H, S, S)
            bias = inp.abs_bias + rel
            x = layer(x, bias + key_mask,  # (B, H, S, S)
                      record.encoder_out(i) if record is not None else None)
        return EncoderOutput(self.layer_norm(x), inp.pad_mask, inp.positions.expand(B, -1, -1))

    @torch.inference_mode()
    def infer(self, input_ids: torch.Tensor, image_embeds: torch.Tensor, grid: tuple[int, int]) -> EncoderOutput:
        """`forward`'s answer for inference (equal within float rounding, tested), without autograd.

        One bias buffer serves every layer (only its two diagonal blocks change), and samples with padding
        run on their own rows and the top-left block of the bias instead of through a (B, H, S, S) padding
        mask: that mask would cost B x 17 MB and a memory pass per layer at 512 px. A sample's block is
        exactly its unpadded bias: positions do not depend on the batch."""
        B = input_ids.shape[0]
        P = image_embeds.shape[1]
        inp = self._inputs(input_ids, image_embeds, grid)
        x, abs_bias = inp.x, inp.abs_bias
        has_pads = bool(inp.text_pad.any())
        if has_pads:  # (length of the text + image tokens, the rows of that length), shortest first
            lengths = (~inp.text_pad).sum(1).tolist()
            groups = [(P + n, torch.tensor([i for i in range(B) if lengths[i] == n], device=x.device))
                      for n in sorted(set(lengths))]
        bias = abs_bias.clone()
        for i, layer in enumerate(self.layers):
            t = 0 if self.cfg.share_attn_bias else i
            text_rel = _gather_heads(self.token_rel_pos_table_list[t], inp.text_buckets)
            torch.add(abs_bias[:, :, P:, P:], text_rel, out=bias[:, :, P:, P:])
            _add_image_rel(abs_bias[0, :, :P, :P], self.image_rel_pos_table_list[t].weight,
                           self.cfg.image_bucket_size, grid, bias[0, :, :P, :P])
            if not has_pads:
                x = layer(x, bias)
                continue
            for n, index in groups:  # padded positions keep their zeros; the decoder masks them out
                x[index, :n] = layer(x[index, :n], bias[:, :, :n, :n])
        return EncoderOutput(self.layer_norm(x), inp.pad_mask, inp.positions.expand(B, -1, -1))


@dataclass
class _EncoderInputs:
    x: torch.Tensor  # (B, S, d) embedded image and text tokens, zeros at padding
    text_pad: torch.Tensor  # (B, L) bool
    pad_mask: torch.Tensor  # (B, S) bool
    positions: torch.Tensor  # (1, S, d)
    abs_bias: torch.Tensor  # (1, H, S, S)
    text_buckets: torch.Tensor  # (L, L)


# --------------------------------------------------------------------------------------------------
# Decoder


@dataclass
class DecoderState:
    """What step-by-step decoding keeps between steps (see `Decoder.start`)."""

    cross_kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer, (B, H, S, dh) each, computed once
    cross_bias: torch.Tensor  # (B, H, T, S) absolute position bias + encoder padding mask
    self_bias: list[torch.Tensor]  # per layer (H, T, T) absolute + relative bias
    output_weight: torch.Tensor  # (V', d) rows of the tied embedding for the ids whose logits are needed
    caches: list[dict[str, torch.Tensor]]  # per layer self-attention keys/values (N, H, t, dh)
    step: int = 0


class Decoder(nn.Module):
    def __init__(self, cfg: OFAConfig, embed_tokens: nn.Embedding) -> None:
        super().__init__()
        d = cfg.d_model
        self.cfg = cfg
        self.embed_tokens = embed_tokens  # tied: also the output projection (no bias)
        self.embed_scale = math.sqrt(d) if cfg.scale_embedding else 1.0
        self.layernorm_embedding = nn.LayerNorm(d)
        self.embed_positions = nn.Embedding(cfg.max_position_embeddings + 2, d)
        self.pos_ln = nn.LayerNorm(d)
        self.self_pos_q_linear = nn.Linear(d, d)
        self.self_pos_k_linear = nn.Linear(d, d)
        self.cross_pos_q_linear = nn.Linear(d, d)
        self.cross_pos_k_linear = nn.Linear(d, d)
        self.pos_scaling = (d / cfg.decoder_attention_heads * cfg.attn_scale_factor) ** -0.5
        rates = linear_rates(cfg.decoder_drop_path_rate, cfg.decoder_layers)
        self.layers = nn.ModuleList(DecoderLayer(cfg, r) for r in rates)
        self.layer_norm = nn.LayerNorm(d)
        tables = 1 if cfg.share_attn_bias else cfg.decoder_layers
        self.token_rel_pos_table_list = nn.ModuleList(
            nn.Embedding(2 * cfg.token_bucket_size - 1, cfg.decoder_attention_heads) for _ in range(tables))

    def _biases(self, T: int, enc: EncoderOutput) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Self-attention bias per layer (H, T, T) and cross-attention bias (B, H, T, S) for positions 0..T-1."""
        H = self.cfg.decoder_attention_heads
        B, S, _ = enc.position.shape
        target = self.pos_ln(self.embed_positions.weight[:T])  # (T, d)
        q_self = self.self_pos_q_linear(target).view(T, H, -1).transpose(0, 1) * self.pos_scaling
        k_self = self.self_pos_k_linear(target).view(T, H, -1).transpose(0, 1)
        abs_self = torch.matmul(q_self, k_self.transpose(1, 2))  # (H, T, T)
        positions = torch.arange(T, device=target.device)
        buckets = token_rel_bucket(self.cfg.token_bucket_size, positions, positions)
        self_bias = [abs_self + _gather_heads(self.token_rel_pos_table_list[0 if self.cfg.share_attn_bias else i],
                                              buckets) for i in range(len(self.layers))]
        q_cross = self.cross_pos_q_linear(target).view(T, H, -1).transpose(0, 1) * self.pos_scaling  # (H, T, dh)
        k_cross = self.cross_pos_k_linear(enc.position).view(B, S, H, -1).transpose(1, 2)  # (B, H, S, dh)
        cross_bias = torch.matmul(q_cross.unsqueeze(0), k_cross.transpose(2, 3))  # (B, H, T, S)
        cross_bias = cross_bias + _key_mask(enc.pad_mask, cross_bias.dtype)  # zeros without padding: no host sync
        return self_bias, cross_bias

    def _embed(self, tokens: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Token embeddings of positions start, start + 1, ... (positions enter only when entangled)."""
        x = self.embed_tokens(tokens).to(self.layernorm_embedding.weight.dtype) * self.embed_scale
        if self.cfg.entangle_position_embedding and not self.cfg.disable_entangle:
            x = x + self.embed_positions.weight[start:start + tokens.shape[1]]
        return self.layernorm_embedding(x)

    def forward(self, prev_tokens: torch.Tensor, enc: EncoderOutput, output_ids: torch.Tensor | None = None,
                record: AttentionRecord | None = None) -> torch.Tensor:
        """Teacher-forced pass over whole prefixes (B, T), starting with BOS -> logits (B, T, V).

        With `output_ids` (V',) only those ids' logits are computed: (B, T, V').
        """
        T = prev_tokens.shape[1]
        self_bias, cross_bias = self._biases(T, enc)
        causal = torch.full((T, T), float("-inf"), device=prev_tokens.device).triu(1)
        y = self._embed(prev_tokens)
        for i, (layer, bias) in enumerate(zip(self.layers, self_bias)):
            kv = layer.cross_attn.project_kv(enc.hidden)
            y = layer(y, bias + causal, kv, cross_bias, probs_out=record.decoder_out(i) if record is not None else None)
        weight = self.embed_tokens.weight if output_ids is None else self.embed_tokens.weight[output_ids]
        return F.linear(self.layer_norm(y), weight.to(y.dtype))

    def start(self, enc: EncoderOutput, max_steps: int, output_ids: torch.Tensor | None = None) -> DecoderState:
        """Prepare incremental decoding of up to `max_steps` positions; cross keys/values computed once."""
        self_bias, cross_bias = self._biases(max_steps, enc)
        weight = self.embed_tokens.weight if output_ids is None else self.embed_tokens.weight[output_ids]
        weight = weight.to(self.layer_norm.weight.dtype)  # the table may be stored compact (float16)
        return DecoderState(
            cross_kv=[self._cross_kv(layer.cross_attn, enc.hidden) for layer in self.layers],
            cross_bias=cross_bias, self_bias=self_bias, output_weight=weight,
            caches=[{} for _ in self.layers])

    def _cross_kv(self, attn: Attention, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Mixed precision (the predictor's bf16 mode): the key/value projections over all encoder tokens
        # may run in bf16 like the encoder; every per-step computation stays in the decoder's dtype.
        dtype = self.layer_norm.weight.dtype
        k, v = attn.project_kv(hidden.to(attn.k_proj.weight.dtype))
        return k.to(dtype), v.to(dtype)

    def step(self, tokens: torch.Tensor, state: DecoderState) -> torch.Tensor:
        """Feed the newest token of each row (N,) at position `state.step` -> logits (N, V') of its successor."""
        t = state.step
        if t >= state.cross_bias.shape[2]:
            raise RuntimeError(f"decoder state was prepared for {state.cross_bias.shape[2]} steps")
        y = self._embed(tokens[:, None], t)  # (N, 1, d)
        cross_bias = state.cross_bias[:, :, t:t + 1]  # (B, H, 1, S), the same for all K beams
        for layer, bias, kv, cache in zip(self.layers, state.self_bias, state.cross_kv, state.caches):
            y = layer(y, bias[:, t:t + 1, :t + 1], kv, cross_bias, cache)
        state.step += 1
        return F.linear(self.layer_norm(y[:, 0]), state.output_weight)

    @staticmethod
    def reorder(state: DecoderState, order: torch.Tensor) -> None:
        """Follow the beam search's choice of parent rows (N,) (always within each sample's K rows)."""
        for cache in state.caches:
            for key in cache:
                cache[key] = cache[key].index_select(0, order)


# --------------------------------------------------------------------------------------------------
# The model


class OFAModel(nn.Module):
    """ResNet + OFA encoder + OFA decoder with one token embedding shared by both and the output layer."""

    def __init__(self, cfg: OFAConfig) -> None:
        super().__init__()
        unsupported = [name for name, bad in (
            ("normformer=False", not cfg.normformer),
            ("encoder_normalize_before=False", not cfg.encoder_normalize_before),
            ("decoder_normalize_before=False", not cfg.decoder_normalize_before),
            ("use_gamma_feature=True", cfg.use_gamma_feature),
            ("layernorm_embedding=False", not cfg.layernorm_embedding),
            ("patch_layernorm_embedding=False", not cfg.patch_layernorm_embedding),
            ("add_type_embedding=False", not cfg.add_type_embedding),
            (f"activation_function={cfg.activation_function!r}", cfg.activation_function != "gelu"),
        ) if bad]
        if unsupported:
            raise ValueError(f"unsupported OFA configuration (no published OFA checkpoint uses it): "
                             f"{', '.join(unsupported)}")
        self.config = cfg
        embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=cfg.pad_token_id)
        self.encoder = Encoder(cfg, embed_tokens)
        self.decoder = Decoder(cfg, embed_tokens)

    def encode(self, input_ids: torch.Tensor, patch_images: torch.Tensor, image_index: torch.Tensor | None = None,
               record: AttentionRecord | None = None) -> EncoderOutput:
        """`image_index` (B,): row i uses image image_index[i] of `patch_images` (one backbone pass each)."""
        image_embeds, grid = self.encoder.embed_image(patch_images)
        if image_index is not None:
            image_embeds = image_embeds.index_select(0, image_index)
        return self.encoder(input_ids, image_embeds, grid, record)

    def forward(self, input_ids: torch.Tensor, patch_images: torch.Tensor, prev_tokens: torch.Tensor,
                output_ids: torch.Tensor | None = None, image_index: torch.Tensor | None = None,
                record: AttentionRecord | None = None) -> torch.Tensor:
        """Teacher-forced logits (B, T, V) (or (B, T, V') for `output_ids`); prev_tokens starts with BOS.

        `record` asks for chosen layers' attention probabilities (distillation)."""
        return self.decoder(prev_tokens, self.encode(input_ids, patch_images, image_index, record), output_ids, record)

    def compact_token_table_(self) -> bool:
        """Store the token table (shared by encoder, decoder and output layer) in float16 when that loses
        nothing, for inference: OFA's checkpoints are published in float16, so their table (59,457 x d, 61 MB
        in float32 for OFA-tiny) converts back exactly. Rows are widened when looked up, with the same
        values as before. Returns whether it was converted; the model is inference-only afterwards."""
        table = self.encoder.embed_tokens.weight
        if table.dtype != torch.float32:
            return False
        compact = torch.empty_like(table, dtype=torch.float16)
        for rows in range(0, table.shape[0], 4096):  # in chunks: no 92 MB of temporaries at load time
            chunk = table[rows:rows + 4096]
            compact[rows:rows + 4096] = chunk
            if not torch.equal(compact[rows:rows + 4096].float(), chunk):
                return False
        table.data = compact
        return True

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def prepared_for_inference(self, precision: str | None = None, device: str | torch.device | None = None,
                               fuse: bool = True, copy: bool = True, *, dtype: str | None = None) -> OFAForInference:
        """This model made ready for inference, behind the `GroundingModel` interface the predictor uses.

        precision: "fp32" (the default: the reference's arithmetic) or "bf16" (backbone, encoder and the decoder's
            cross-attention key/value projections in bfloat16, the rest of the decoder in float32; on a CPU without
            bfloat16 units this falls back to fp32 with a warning, as emulated bf16 is several times slower there).
        fuse: fold BatchNorm into the convolutions and store the token table in float16 where exact.
        copy: work on a copy and leave this model as it is (False: convert this model itself, which is then
            inference-only; for a caller that owns a freshly loaded model and wants no second copy in memory).
        dtype: deprecated alias of `precision` (warns; removed in the next release).
        """
        precision = precision_argument(precision, dtype, "OFAModel.prepared_for_inference")
        try:
            device = torch.device(device or "cpu")
        except (RuntimeError, TypeError):
            raise ValueError(f"device {device!r} is not a torch device (e.g. cpu, cuda, cuda:1)") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device} requested but CUDA is not available")
        if precision == "bf16" and device.type == "cpu" and not cpu_bf16_supported():
            log.warning("bf16 requested, but this CPU has no bfloat16 units (AVX-512 BF16 or AMX): running fp32, "
                        "which is faster here and exact")
            precision = "fp32"
        stored_parameters = self.num_parameters()
        model = _copy.deepcopy(self) if copy else self
        model.eval().requires_grad_(False).to(device)
        if fuse:  # BatchNorm folded into the convolutions, channels_last
            model.encoder.embed_images.fuse_for_inference_()
            model.compact_token_table_()  # float16 when exact: 31 MB less for OFA-tiny
        if precision == "bf16":
            for child in model.encoder.children():
                if child is not model.encoder.embed_tokens:  # shared with the decoder: stays as it is
                    child.to(torch.bfloat16)
            for layer in model.decoder.layers:  # projections over all encoder tokens, once per query
                layer.cross_attn.k_proj.to(torch.bfloat16)
                layer.cross_attn.v_proj.to(torch.bfloat16)
        return OFAForInference(model, precision, device, stored_parameters)


def init_weights(model: OFAModel, std: float = 0.02) -> OFAModel:
    """Fresh weights as OFA initialises them: N(0, std) linear/embedding weights, zero biases and pad row.
    In place (module order, so a seeded run draws the same numbers); returns `model`."""
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=std)
            torch.nn.init.zeros_(module.bias)
        elif isinstance(module, torch.nn.Embedding):
            torch.nn.init.normal_(module.weight, std=std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
    return model


class _SkipInit(TorchFunctionMode):
    """Within the block, `torch.nn.init`'s functions (the ones torch routes through `__torch_function__`:
    normal_, uniform_, kaiming_uniform_ ...) return their tensor untouched. A torch function mode, not a
    patch: modes are per thread, so other threads initialise as usual meanwhile."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if getattr(func, "__module__", None) == "torch.nn.init":
            return args[0] if args else kwargs["tensor"]
        return func(*args, **(kwargs or {}))


def meta_model(cfg: OFAConfig) -> OFAModel:
    """An `OFAModel` on the meta device whose tensors were never initialised: the structure to load a checkpoint
    into with `load_state_dict(..., assign=True)`, which replaces every tensor. Initialising meta tensors
    would be wasted work, and it pulls in torch's reference-op machinery (about 1.5 s of imports on first use)."""
    with torch.device("meta"), _SkipInit():
        return OFAModel(cfg)


# --------------------------------------------------------------------------------------------------
# Inference interface

# Precision modes: fp32 is the reference's arithmetic (parity); bf16 converts the backbone and encoder
# weights to bfloat16 (fast on CPUs with AVX-512 BF16 / AMX and on GPUs) and keeps the decoder in fp32:
# the decoder is ~10 % of the time but decides between near-tied bins (with it in bf16 too, 88 % of a
# trained model's boxes kept IoU >= 0.9 with fp32's, 98.7 % without; docs/speed.md). int8 dynamic
# quantisation of the linear layers was measured and dropped: 6 % faster single queries, slower batches,
# 12 % token agreement (docs/speed.md, Measured and dropped).
PRECISIONS = ("fp32", "bf16")
DTYPES = PRECISIONS  # deprecated: the old name of PRECISIONS (removed in the next release)


def precision_argument(precision: str | None, dtype: str | None, where: str) -> str:
    """The precision mode a caller of `where` asked for: `precision`, or else the value of `dtype=` (its deprecated
    alias, with a DeprecationWarning), or else "fp32"; a TypeError when both are given, a ValueError for a mode
    not in PRECISIONS. ("dtype" elsewhere in the package is a torch.dtype or a stored precision.)"""
    if dtype is not None:
        if precision is not None:
            raise TypeError(f"{where}: give precision= only; dtype= is its deprecated alias, not a second setting")
        warnings.warn(f"{where}(dtype=...) is deprecated and will be removed in the next release; use precision=...",
                      DeprecationWarning, stacklevel=3)  # 3: the caller of `where`, not `where` itself
        precision = dtype
    if precision is None:
        return "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


@runtime_checkable
class GroundingModel(Protocol):
    """What `Grounder` and its beam search call on a model: implemented by `OFAForInference` (torch) and
    `onnx_export.OnnxModel` (onnxruntime). Tensors come back on `device`; no method needs autograd."""

    config: OFAConfig
    device: torch.device
    precision: str  # a precision mode of PRECISIONS

    def num_parameters(self) -> int:
        """Parameters as stored in the checkpoint (before any folding)."""
        ...

    def image_features(self, pixels: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, 3, S, S) float32 normalised pixels -> image token embeddings (B, P, d) and their grid (h, w)."""
        ...

    def encode(self, input_ids: torch.Tensor, image_features: torch.Tensor, grid: tuple[int, int]) -> EncoderOutput:
        """input_ids (B, L) right-padded; image_features (B, P, d) -> the encoder's output (positions in float32)."""
        ...

    def decoder_start(self, enc: EncoderOutput, max_steps: int, output_ids: torch.Tensor | None) -> Any:
        """A decoding state for up to `max_steps` positions, with logits for `output_ids` only (None: all)."""
        ...

    def decoder_step(self, tokens: torch.Tensor, state: Any) -> torch.Tensor:
        """The newest token of each of the N = B*K rows (N,) -> logits (N, V') of its successor."""
        ...

    def decoder_reorder(self, state: Any, order: torch.Tensor) -> None:
        """Follow the beam search's choice of parent rows (N,)."""
        ...


class OFAForInference:
    """An OFAModel prepared by `OFAModel.prepared_for_inference`: the `GroundingModel` interface over it."""

    def __init__(self, model: OFAModel, precision: str, device: torch.device, stored_parameters: int) -> None:
        self.ofa, self.precision, self.device = model, precision, device
        self.config = model.config
        self._stored_parameters = stored_parameters
        self._float = torch.bfloat16 if precision == "bf16" else torch.float32

    @property
    def dtype(self) -> str:
        """Deprecated (removed in the next release): `precision`, its new name."""
        warnings.warn("OFAForInference.dtype is deprecated and will be removed in the next release; use .precision",
                      DeprecationWarning, stacklevel=2)
        return self.precision

    def num_parameters(self) -> int:
        return self._stored_parameters

    @torch.inference_mode()
    def image_features(self, pixels: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        return self.ofa.encoder.embed_image(pixels.to(self.device, self._float))

    @torch.inference_mode()
    def encode(self, input_ids: torch.Tensor, image_features: torch.Tensor, grid: tuple[int, int]) -> EncoderOutput:
        enc = self.ofa.encoder.infer(input_ids.to(self.device), image_features, grid)
        if enc.position.dtype != torch.float32:  # bf16 mode: the decoder runs in fp32
            enc = EncoderOutput(enc.hidden, enc.pad_mask, enc.position.float())
        return enc

    @torch.inference_mode()
    def decoder_start(self, enc: EncoderOutput, max_steps: int, output_ids: torch.Tensor | None) -> DecoderState:
        return self.ofa.decoder.start(enc, max_steps, output_ids)

    @torch.inference_mode()
    def decoder_step(self, tokens: torch.Tensor, state: DecoderState) -> torch.Tensor:
        return self.ofa.decoder.step(tokens, state)

    @torch.inference_mode()
    def decoder_reorder(self, state: DecoderState, order: torch.Tensor) -> None:
        self.ofa.decoder.reorder(state, order)
