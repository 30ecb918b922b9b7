"""ONNX export, and an onnxruntime-backed model that `Grounder` drives with the same beam search.

Four graphs, exported from the same torch modules (`ofa-ground export-onnx MODEL OUT`):
- `image.onnx`: pixels (1, 3, S, S) -> image token embeddings (1, P, d)  [backbone; cacheable per image]
- `encoder.onnx`: image embeddings (B, P, d), input ids (B, L) -> hidden (B, P+L, d), positions
  (B, P+L, d), padding mask (B, P+L)
- `decoder_start.onnx`: hidden, positions, padding mask -> per layer the cross-attention keys and
  values (B, H, P+L, dh), the cross-attention bias (B, H, T, P+L), the self-attention biases
  (layers, H, T, T) and the position embeddings added to the token embeddings (T, d; zeros unless the
  model entangles positions in the decoder) for the T decoding steps  [once per query]
- `decoder_step.onnx`: the newest tokens (N, 1), that step's bias rows and position embedding (1, d), the
  cross keys/values and the self-attention KV cache (N, H, t, dh) per layer -> logits over the open ids
  (N, V') and the cache grown by one position  [once per step]
`OnnxModel` runs the four sessions behind the inference interface `Grounder` calls
(`model.GroundingModel`), so preprocessing, batching, the constrained beam search and box decoding are the
torch path's own code. Needs the `onnx` extra (onnx, onnxruntime, onnxscript).
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .checkpoint import LoadedCheckpoint, read_settings
from .generation import allowed_token_ids
from .model import EncoderOutput, OFAModel

__all__ = ["OnnxModel", "export_onnx", "onnx_grounder"]

GRAPHS = ("image", "encoder", "decoder_start", "decoder_step")
OPSET = 17
MIN_OPSET = 14  # scaled-dot-product attention's export


def max_opset() -> int | None:
    """The newest opset this torch writes (None when its private constant moves: the export then says)."""
    try:
        from torch.onnx._constants import ONNX_MAX_OPSET
    except ImportError:
        return None
    return int(ONNX_MAX_OPSET)


class _Image(nn.Module):
    def __init__(self, model: OFAModel) -> None:
        super().__init__()
        self.encoder = model.encoder

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.encoder.embed_image(pixels)[0]



class _Encoder(nn.Module):
    def __init__(self, model: OFAModel, grid: tuple[int, int]) -> None:
        super().__init__()
        self.encoder, self.grid = model.encoder, grid

    def forward(self, image_embeds: torch.Tensor, input_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        enc = self.encoder(input_ids, image_embeds, self.grid)
        return enc.hidden, enc.position, enc.pad_mask


class _DecoderStart(nn.Module):
    def __init__(self, model: OFAModel, steps: int) -> None:
        super().__init__()
        self.decoder, self.steps = model.decoder, steps

    def forward(self, hidden: torch.Tensor, position: torch.Tensor, pad_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        state = self.decoder.start(EncoderOutput(hidden, pad_mask, position), self.steps)
        keys = [k for k, _ in state.cross_kv]
        values = [v for _, v in state.cross_kv]
        cfg = self.decoder.cfg
        table = self.decoder.embed_positions.weight[:self.steps]
        step_positions = table if cfg.entangle_position_embedding and not cfg.disable_entangle else table * 0
        return (*keys, *values, state.cross_bias, torch.stack(state.self_bias), step_positions)


class _DecoderStep(nn.Module):
    def __init__(self, model: OFAModel, output_ids: torch.Tensor) -> None:
        super().__init__()
        self.decoder = model.decoder
        self.register_buffer("output_weight", model.decoder.embed_tokens.weight[output_ids].detach().clone())
        self.layers = len(model.decoder.layers)

    def forward(self, tokens: torch.Tensor, self_bias: torch.Tensor, cross_bias: torch.Tensor,
                step_position: torch.Tensor, *kv: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n = self.layers
        cross_k, cross_v, past_k, past_v = kv[:n], kv[n:2 * n], kv[2 * n:3 * n], kv[3 * n:]
        d = self.decoder  # Decoder._embed, with the step's position as an input (zeros unless entangled)
        y = d.layernorm_embedding(d.embed_tokens(tokens) * d.embed_scale + step_position)
        new_k, new_v = [], []
        for i, layer in enumerate(self.decoder.layers):
            cache = {"k": past_k[i], "v": past_v[i]}
            y = layer(y, self_bias[i], (cross_k[i], cross_v[i]), cross_bias, cache)
            new_k.append(cache["k"])
            new_v.append(cache["v"])
        logits = torch.nn.functional.linear(self.decoder.layer_norm(y[:, 0]), self.output_weight)
        return (logits, *new_k, *new_v)


# TracerWarnings the export raises on every run, known to be harmless: the size checks in `model.py`
# (text longer than max_position_embeddings, image grid larger than image_bucket_size) compare traced
# shapes with Python ints. They only guard against inputs the model cannot take; the traced graph has no
# branch there, as the eager model has none for valid inputs.
_BENIGN_TRACER_MESSAGE = r"Converting a tensor to a Python boolean might cause the trace to be incorrect"
_BENIGN_TRACER_MODULE = r"ofa_grounding\.model$"


@contextlib.contextmanager
def _quiet_known_tracer_warnings() -> Iterator[None]:
    """Within the block, ignore exactly the known-benign TracerWarnings from `ofa_grounding.model`; every
    other warning (and these ones from any other module) is shown as usual. Local: the filters are restored."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_BENIGN_TRACER_MESSAGE, category=torch.jit.TracerWarning,
                                module=_BENIGN_TRACER_MODULE)
        yield


def export_onnx(ckpt: LoadedCheckpoint, out: str | Path, opset: int = OPSET) -> Path:
    """Write the four graphs and `onnx_config.json` (with the checkpoint's tokenizer and settings) to `out`, and
    the checkpoint's "not found" threshold and calibration, if it has them, to its grounding.json. ValueError
    for an opset outside MIN_OPSET..max_opset()."""
    newest = max_opset()
    if opset < MIN_OPSET or (newest is not None and opset > newest):
        raise ValueError(f"--opset must be {MIN_OPSET}-{newest or 'the newest torch writes'} (attention needs "
                         f"{MIN_OPSET}), got {opset}")
    from .checkpoint import save_settings, write_card, write_grounding

    model = ckpt.model.eval()
    cfg = model.config
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    size = ckpt.preprocess.patch_image_size
    gen = ckpt.generation
    steps = int(gen.max_len_b) + 1  # what Grounder prepares for: max_len_a is 0 for grounding
    if gen.max_len_a:
        raise ValueError("ONNX export needs max_len_a = 0 (a fixed number of decoding steps)")
    output_ids = allowed_token_ids(gen, cfg.vocab_size, torch.device("cpu"))
    if output_ids is None:
        output_ids = torch.arange(cfg.vocab_size)
    H, dh, n = cfg.decoder_attention_heads, cfg.d_model // cfg.decoder_attention_heads, len(model.decoder.layers)

    torch.manual_seed(0)
    pixels = torch.randn(1, 3, size, size)
    with torch.no_grad():
        image_embeds, grid = model.encoder.embed_image(pixels)
    # Example inputs with padding, so that the masked paths are the ones traced (they equal the unmasked
    # computation when a batch has no padding: the mask adds zeros).
    input_ids = torch.tensor([[0, 100, 200, 300, 2], [0, 100, 2, 1, 1]])
    two = image_embeds.expand(2, -1, -1).contiguous()
    hidden, position, pad_mask = (t.detach() for t in _Encoder(model, grid)(two, input_ids))
    start_out = [t.detach() for t in _DecoderStart(model, steps)(hidden, position, pad_mask)]
    N, t = 2 * gen.beam_size, 2
    tokens = torch.zeros(N, 1, dtype=torch.long)
    self_bias = start_out[-2][:, :, t:t + 1, :t + 1].contiguous()
    cross_bias = start_out[-3][:, :, t:t + 1].contiguous()
    step_position = start_out[-1][t:t + 1].contiguous()
    past = [torch.randn(N, H, t, dh) for _ in range(2 * n)]
    layer_names = [f"{kind}_{i}" for kind in ("cross_k", "cross_v") for i in range(n)]
    past_names = [f"past_{kind}_{i}" for kind in ("k", "v") for i in range(n)]
    present_names = [f"present_{kind}_{i}" for kind in ("k", "v") for i in range(n)]

    batch, length, rows = "batch", "length", "rows"
    specs = {
        "image": (_Image(model), (pixels,), ["pixels"], ["image_embeds"], {}),
        "encoder": (_Encoder(model, grid), (two, input_ids), ["image_embeds", "input_ids"],
                    ["hidden", "position", "pad_mask"],
                    {"image_embeds": {0: batch}, "input_ids": {0: batch, 1: length}, "hidden": {0: batch, 1: "seq"},
                     "position": {0: batch, 1: "seq"}, "pad_mask": {0: batch, 1: "seq"}}),
        "decoder_start": (_DecoderStart(model, steps), (hidden, position, pad_mask), ["hidden", "position", "pad_mask"],
                          [*layer_names, "cross_bias", "self_bias", "step_positions"],
                          {"hidden": {0: batch, 1: "seq"}, "position": {0: batch, 1: "seq"},
                           "pad_mask": {0: batch, 1: "seq"}, "cross_bias": {0: batch, 3: "seq"},
                           **{name: {0: batch, 2: "seq"} for name in layer_names}}),
        "decoder_step": (_DecoderStep(model, output_ids),
                         (tokens, self_bias, cross_bias, step_position, *start_out[:2 * n], *past),
                         ["tokens", "self_bias", "cross_bias", "step_position", *layer_names, *past_names],
                         ["logits", *present_names],
                         {"tokens": {0: rows}, "self_bias": {3: "keys"}, "cross_bias": {0: batch, 3: "seq"},
                          **{name: {0: batch, 2: "seq"} for name in layer_names},
                          **{name: {0: rows, 2: "past"} for name in past_names},
                          **{name: {0: rows, 2: "keys"} for name in present_names}, "logits": {0: rows}}),
    }
    # The encoder's functional `forward` is traced (a gather for the image bias, not `infer`'s strided views)
    for name, (module, args, inputs, outputs, axes) in specs.items():
        with _quiet_known_tracer_warnings():
            torch.onnx.export(module.eval(), args, str(out / f"{name}.onnx"), input_names=inputs,
                              output_names=outputs, dynamic_axes=axes, opset_version=opset, dynamo=False)
    save_settings(out / "settings", cfg, ckpt.tokenizer_dir, ckpt.preprocess, ckpt.generation)  # no weights
    meta = {"graphs": list(GRAPHS), "steps": steps, "grid": list(grid), "layers": n, "heads": H, "head_dim": dh,
            "output_ids": output_ids.tolist(), "opset": opset, "parameters": model.num_parameters()}
    (out / "onnx_config.json").write_text(json.dumps(meta))
    write_grounding(out, ckpt.min_confidence, ckpt.calibration, ckpt.zoom)  # the same model: the same calibration
    write_card(out, ckpt.card)
    return out


# --------------------------------------------------------------------------------------------------
# Running the graphs


@dataclass
class _OnnxState:
    cross: list[np.ndarray]
    cross_bias: np.ndarray
    self_bias: np.ndarray
    step_positions: np.ndarray | None  # None: an export from before positions were an input (not entangled)
    batch: int
    past: list[np.ndarray] = field(default_factory=list)
    step: int = 0


class OnnxModel:
    """The exported graphs behind the `GroundingModel` interface `Grounder` uses (onnxruntime on CPU, fp32)."""

    precision = "fp32"
    device = torch.device("cpu")

    @property
    def dtype(self) -> str:
        """Deprecated (removed in the next release): `precision`, its new name."""
        warnings.warn("OnnxModel.dtype is deprecated and will be removed in the next release; use .precision",
                      DeprecationWarning, stacklevel=2)
        return self.precision

    def __init__(self, directory: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        directory = Path(directory)
        meta = json.loads((directory / "onnx_config.json").read_text())
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.sessions = {name: ort.InferenceSession(str(directory / f"{name}.onnx"), options,
                                                    providers=["CPUExecutionProvider"]) for name in meta["graphs"]}
        self.steps, self.grid = meta["steps"], tuple(meta["grid"])
        self.layers, self.heads, self.head_dim = meta["layers"], meta["heads"], meta["head_dim"]
        self._parameters = meta["parameters"]
        self.config, self.tokenizer, self.preprocess, self.generation, _ = read_settings(directory / "settings")

    def run(self, graph: str, **feeds: np.ndarray) -> list[np.ndarray]:
        return self.sessions[graph].run(None, feeds)

    def num_parameters(self) -> int:
        return self._parameters

    def image_features(self, pixels: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        (embeds,) = self.run("image", pixels=pixels.float().numpy())
        return torch.from_numpy(embeds), self.grid

    def encode(self, input_ids: torch.Tensor, image_features: torch.Tensor, grid: tuple[int, int]) -> EncoderOutput:
        hidden, position, pad_mask = self.run("encoder", image_embeds=image_features.contiguous().numpy(),
                                              input_ids=input_ids.numpy())
        return EncoderOutput(torch.from_numpy(hidden), torch.from_numpy(pad_mask), torch.from_numpy(position))

    def decoder_start(self, enc: EncoderOutput, max_steps: int, output_ids: torch.Tensor | None) -> _OnnxState:
        if max_steps > self.steps:
            raise ValueError(f"the exported decoder was prepared for {self.steps} steps, not {max_steps}")
        outs = self.run("decoder_start", hidden=enc.hidden.numpy(), position=enc.position.numpy(),
                        pad_mask=enc.pad_mask.numpy())
        n = self.layers
        positions = outs[2 * n + 2] if len(outs) > 2 * n + 2 else None
        return _OnnxState(cross=outs[:2 * n], cross_bias=outs[2 * n], self_bias=outs[2 * n + 1],
                          step_positions=positions, batch=enc.hidden.shape[0])

    def decoder_step(self, tokens: torch.Tensor, state: _OnnxState) -> torch.Tensor:
        t, n = state.step, self.layers
        rows = tokens.shape[0]
        if not state.past:
            shape = (rows, self.heads, 0, self.head_dim)
            state.past = [np.zeros(shape, np.float32) for _ in range(2 * n)]
        feeds = {"tokens": tokens.reshape(-1, 1).numpy(), "self_bias": state.self_bias[:, :, t:t + 1, :t + 1].copy(),
                 "cross_bias": state.cross_bias[:, :, t:t + 1].copy()}
        if state.step_positions is not None:
            feeds["step_position"] = state.step_positions[t:t + 1].copy()
        feeds.update({f"{kind}_{i}": state.cross[j * n + i] for j, kind in enumerate(("cross_k", "cross_v"))
                      for i in range(n)})
        feeds.update({f"past_{kind}_{i}": state.past[j * n + i] for j, kind in enumerate("kv") for i in range(n)})
        logits, *present = self.run("decoder_step", **feeds)
        state.past, state.step = present, t + 1
        return torch.from_numpy(logits)

    def decoder_reorder(self, state: _OnnxState, order: torch.Tensor) -> None:
        idx = order.numpy()
        state.past = [p[idx] for p in state.past]


def onnx_grounder(directory: str | Path, threads: int | None = None, **kwargs: Any) -> Any:
    """A `Grounder` whose model runs in onnxruntime. `min_confidence`, `calibration` and `zoom` default to the
    folder's grounding.json (what the exported model carried), as `Grounder.from_pretrained` does for a model
    directory."""
    from .checkpoint import read_calibration, read_min_confidence, read_zoom
    from .predictor import Grounder

    model = OnnxModel(directory, threads)
    kwargs.setdefault("min_confidence", read_min_confidence(Path(directory)))
    kwargs.setdefault("calibration", read_calibration(Path(directory)))
    kwargs.setdefault("zoom", read_zoom(Path(directory)))
    return Grounder(model, model.tokenizer, model.preprocess, model.generation, **kwargs)
