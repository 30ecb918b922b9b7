"""Reading and writing model directories.

Layouts read:
- ModelScope OFA directories: `config.json`, `configuration.json`, `vocab.json`, `merges.txt`,
  `pytorch_model.bin` (read with `torch.load(weights_only=True)`, never a bare unpickle);
- our own directories: the same files with `model.safetensors` instead of `pytorch_model.bin`;
- a `.safetensors` file whose folder holds the other files.
Weights stored in float16/bfloat16 are upcast to float32. Loading is strict: missing, unexpected or
mis-shaped keys raise `CheckpointError` naming them. The only keys dropped are listed in
`_UNUSED_KEYS` (parts of OFA that visual grounding never runs, and index tables we recompute).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_model
from torch import nn

from .config import GenerationConfig, OFAConfig, PreprocessConfig
from .model import OFAModel
from .tokenizer import OFATokenizer

__all__ = [
    "CheckpointError",
    "LoadedCheckpoint",
    "convert_state_dict",
    "init_weights",
    "load_checkpoint",
    "load_state_dict",
    "save_checkpoint",
]

log = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_TIED_KEYS = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "decoder.output_projection.weight")
# Present in OFA checkpoints, unused by grounding: the decoder's image-code generation branch and the
# int64 index tables OFA stores as buffers (we compute buckets and image ids from their formulas).
_UNUSED_KEYS = re.compile(
    r"^(encoder|decoder)\.(token_rp_bucket|image_rp_bucket|image_position_idx)$"
    r"|^decoder\.(embed_image_positions\.weight|image_pos_ln\.(weight|bias)|code_layernorm_embedding\.(weight|bias)"
    r"|image_rel_pos_table_list\.\d+\.weight)$")


class CheckpointError(ValueError):
    """A model directory or weights file is unusable; the message says which file or keys and why."""


@dataclass
class LoadedCheckpoint:
    model: OFAModel
    tokenizer: OFATokenizer
    preprocess: PreprocessConfig
    generation: GenerationConfig
    path: Path


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a `.safetensors` file or a torch pickle read with `weights_only=True`."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        # mmap: the file's pages are released as a whole once every tensor was copied out (see
        # convert_state_dict), instead of leaving freed fragments on the heap.
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else ""
        raise CheckpointError(f"{path}: cannot read weights ({type(exc).__name__}: {reason})") from None
    for wrapper in ("state_dict", "model"):  # training checkpoints nest the weights
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors")
    return state


def convert_state_dict(state: dict[str, torch.Tensor], model: OFAModel) -> dict[str, torch.Tensor]:
    """Map an OFA state dict (ModelScope/transformers names, or ours) onto `model`'s keys, strictly.

    Upcasts floating tensors to the model's dtype, checks the three tied embedding keys agree, drops
    `_UNUSED_KEYS`, and raises `CheckpointError` listing missing, unexpected and mis-shaped keys.
    """
    state = dict(state)
    tied = [state.pop(k) for k in _TIED_KEYS if k in state]
    if tied:
        for other in tied[1:]:
            if other.shape != tied[0].shape or not torch.equal(other, tied[0]):
                raise CheckpointError("token embeddings and output projection differ; OFA ties them "
                                      f"({', '.join(k for k in _TIED_KEYS)})")
        state["encoder.embed_tokens.weight"] = state["decoder.embed_tokens.weight"] = tied[0]
    state = {k: v for k, v in state.items() if not _UNUSED_KEYS.match(k)}

    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(f"{k} {tuple(state[k].shape)} (model expects {tuple(expected[k].shape)})"
                       for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshaped)):
        if keys:
            shown = ", ".join(keys[:5]) + (f", ... ({len(keys)} in all)" if len(keys) > 5 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise CheckpointError("checkpoint does not fit the model: " + "; ".join(problems))
    converted: dict[int, torch.Tensor] = {}  # tied keys share one tensor: convert it once
    for k, v in state.items():
        if id(v) not in converted:  # always a copy, never a view of the file's memory
            converted[id(v)] = v.to(expected[k].dtype, copy=True)
        state[k] = converted[id(v)]
    return state


def init_weights(model: OFAModel, std: float = 0.02) -> OFAModel:
    """Fresh weights as OFA initialises them: N(0, std) linear/embedding weights, zero biases and pad row."""
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


@contextlib.contextmanager
def _skip_init():
    """Make torch.nn.init a no-op while modules are built on the meta device: every tensor is replaced by
    the checkpoint's anyway, and initialising meta tensors pulls in torch's reference-op machinery
    (about 1.7 s of imports on first use)."""
    names = ("normal_", "uniform_", "zeros_", "ones_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_",
             "xavier_normal_", "trunc_normal_", "constant_")
    saved = {name: getattr(nn.init, name) for name in names}
    try:
        for name in names:
            setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, fn in saved.items():
            setattr(nn.init, name, fn)


def _build(config: OFAConfig, state: dict[str, torch.Tensor]) -> OFAModel:
    with torch.device("meta"), _skip_init():
        model = OFAModel(config)
    model.load_state_dict(convert_state_dict(state, model), strict=True, assign=True)
    return model.eval()


def load_checkpoint(path: str | Path) -> LoadedCheckpoint:
    """Load a model directory (or a `.safetensors` file inside one) with its tokenizer and settings."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such model directory or file")
    if path.is_file():
        if path.suffix not in (".safetensors", ".bin", ".pt", ".pth"):
            raise CheckpointError(f"{path}: not a model directory or weights file")
        directory, weights = path.parent, path
    else:
        directory = path
        weights = next((path / f for f in WEIGHT_FILES if (path / f).is_file()), None)
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{directory}: not a checkpoint directory (no config.json)")
    if weights is None:
        raise CheckpointError(f"{directory}: no weights file ({' or '.join(WEIGHT_FILES)})")
    try:
        config = OFAConfig.from_dict(_read_json(config_file))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{config_file}: invalid model configuration ({exc})") from None

    preprocess, generation = PreprocessConfig(), GenerationConfig()
    settings_file = directory / "configuration.json"
    if settings_file.is_file():
        settings = _read_json(settings_file)
        task = str(settings.get("task", "visual-grounding")).replace("_", "-")
        if task != "visual-grounding":
            log.warning("%s: task is %r, not visual-grounding; using it for grounding anyway", settings_file, task)
        block = settings.get("model", {})
        preprocess = PreprocessConfig.from_modelscope(block)
        generation = GenerationConfig.from_modelscope(block.get("beam_search", {}))
        if generation.constraint_range is None:
            log.warning("%s: no constraint_range; boxes may be decoded from non-bin tokens", settings_file)
    if preprocess.language != "en":
        raise CheckpointError(f"{settings_file}: language {preprocess.language!r} is not supported yet (English only)")
    for name in ("vocab.json", "merges.txt"):
        if not (directory / name).is_file():
            raise CheckpointError(f"{directory}: missing tokenizer file {name}")
    try:
        tokenizer = OFATokenizer.from_dir(directory)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{directory}: bad tokenizer files ({exc})") from None
    if tokenizer.vocab_size != config.vocab_size:
        raise CheckpointError(f"{directory}: tokenizer has {tokenizer.vocab_size} ids but config.json says "
                              f"vocab_size {config.vocab_size}")
    model = _build(config, load_state_dict(weights))
    log.info("loaded %s (%d parameters)", weights, model.num_parameters())
    return LoadedCheckpoint(model, tokenizer, preprocess, generation, directory)


def save_checkpoint(directory: str | Path, model: OFAModel, tokenizer_dir: str | Path,
                    preprocess: PreprocessConfig, generation: GenerationConfig,
                    metadata: dict[str, str] | None = None, modelscope: bool = False,
                    dtype: torch.dtype | None = None) -> Path:
    """Write our layout: config.json, configuration.json, model.safetensors, vocab.json, merges.txt.

    With `modelscope`, `pytorch_model.bin` instead of model.safetensors, holding every key an OFA checkpoint
    has (the tied output projection, and zero-initialised tensors for the parts grounding never runs):
    ModelScope's loader prefers a model.safetensors when there is one, and safetensors stores the tied
    projection only once, so the reference would re-initialise it at random (checked with modelscope 1.40.2).
    `dtype=torch.float16` stores the weights at half size (loading upcasts them).
    """
    if model.encoder.embed_images.fused:
        raise ValueError("this model's backbone was fused for inference (Grounder(fuse=True)); save the model "
                         "as loaded by load_checkpoint instead")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps({"model_type": "ofa", **model.config.to_dict()}, indent=2))
    beam = generation.to_dict()
    beam.pop("num_bins")  # not a generator argument: the reference derives it (and rejects the key here)
    beam["constraint_range"] = ",".join(map(str, generation.constraint_range)) if generation.constraint_range else None
    block = {"type": "ofa", "beam_search": {k: v for k, v in beam.items() if v is not None},
             "imagenet_default_mean_and_std": tuple(preprocess.mean) == PreprocessConfig.IMAGENET_MEAN,
             **{k: v for k, v in preprocess.to_dict().items() if k not in ("mean", "std")}}
    settings = {"framework": "pytorch", "task": "visual-grounding", "pipeline": {"type": "visual-grounding"},
                "model": block}
    (directory / "configuration.json").write_text(json.dumps(settings, indent=2))
    for name in ("vocab.json", "merges.txt"):
        (directory / name).write_bytes((Path(tokenizer_dir) / name).read_bytes())
    stored = model
    if dtype is not None and dtype != next(model.parameters()).dtype:
        stored = OFAModel(model.config).to(dtype)
        stored.load_state_dict(model.state_dict())
    for name in WEIGHT_FILES:  # one weights file per folder, so that every reader takes the same one
        (directory / name).unlink(missing_ok=True)
    if modelscope:
        torch.save(_modelscope_state_dict(stored), directory / "pytorch_model.bin")
    else:
        save_model(stored, str(directory / "model.safetensors"), metadata={"format": "pt", **(metadata or {})})
    return directory


def _modelscope_state_dict(model: OFAModel) -> dict[str, torch.Tensor]:
    cfg = model.config
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    state["decoder.embed_tokens.weight"] = state["encoder.embed_tokens.weight"]  # one tensor, three names
    state["decoder.output_projection.weight"] = state["encoder.embed_tokens.weight"]
    d, heads = cfg.d_model, cfg.decoder_attention_heads
    state["decoder.embed_image_positions.weight"] = torch.zeros(cfg.image_bucket_size ** 2 + 1, d)
    for name in ("image_pos_ln", "code_layernorm_embedding"):
        state[f"decoder.{name}.weight"], state[f"decoder.{name}.bias"] = torch.ones(d), torch.zeros(d)
    for i in range(1 if cfg.share_attn_bias else cfg.decoder_layers):
        state[f"decoder.image_rel_pos_table_list.{i}.weight"] = torch.zeros((2 * cfg.image_bucket_size - 1) ** 2 + 3,
                                                                           heads)
    return state
