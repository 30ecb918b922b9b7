"""Reading and writing model directories.

Layouts read (see `read_checkpoint`; callers load models through `loader.load_model`, which uses it):
- ModelScope OFA directories: `config.json`, `configuration.json`, `vocab.json`, `merges.txt`,
  `pytorch_model.bin` (read with `torch.load(weights_only=True)`, never a bare unpickle);
- our own directories: the same files with `model.safetensors` instead of `pytorch_model.bin`;
- Hugging Face OFA directories (OFA's transformers branch, OFA-Compress): no `configuration.json`,
  keys possibly prefixed `model.`;
- a `.safetensors` / `.bin` file whose folder holds the other files;
- OFA's original fairseq `.pt` files (`fairseq.py`: a restricted unpickler and the name mapping).
Layouts written: safetensors (ours), modelscope, hf (`save_checkpoint`). Weights stored in float16/bfloat16 are upcast
to float32. Loading is strict: missing, unexpected or mis-shaped keys raise `CheckpointError` naming
them. The only keys dropped are listed in `_UNUSED_KEYS` (parts of OFA that visual grounding never runs,
and index tables we recompute).
"""

from __future__ import annotations

import json
import logging
import pickle
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_model

from .calibration import Calibration
from .config import GenerationConfig, OFAConfig, PreprocessConfig
from .errors import CheckpointError, first_line
from .fairseq import config_from_fairseq, read_fairseq
from .model import OFAModel, meta_model
from .tokenizer import ASSETS_DIR, OFAChineseTokenizer, OFATokenizer, load_tokenizer
from .zoom import Zoom

__all__ = [
    "LAYOUTS",
    "CheckpointError",
    "LoadedCheckpoint",
    "convert_state_dict",
    "full_state_dict",
    "load_checkpoint",
    "read_checkpoint",
    "read_settings",
    "read_state_dict",
    "read_calibration",
    "read_grounding",
    "read_min_confidence",
    "read_zoom",
    "save_checkpoint",
    "save_settings",
    "write_calibration",
]

log = logging.getLogger(__name__)




WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = {"en": ("vocab.json", "merges.txt"), "zh": ("vocab.txt",), "cn": ("vocab.txt",)}
_TIED_KEYS = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "decoder.output_projection.weight")
# Present in OFA checkpoints, unused by grounding: the decoder's image-code generation branch and the
# int64 index tables OFA stores as buffers (we compute buckets and image ids from their formulas).
_UNUSED_KEYS = re.compile(
    r"^(encoder|decoder)\.(token_rp_bucket|image_rp_bucket|image_position_idx)$"
    r"|^decoder\.(embed_image_positions\.weight|image_pos_ln\.(weight|bias)|code_layernorm_embedding\.(weight|bias)"
    r"|image_rel_pos_table_list\.\d+\.weight)$")


@dataclass
class LoadedCheckpoint:
    model: OFAModel
    tokenizer: OFATokenizer | OFAChineseTokenizer
    preprocess: PreprocessConfig
    generation: GenerationConfig
    path: Path  # the directory or file it came from
    tokenizer_dir: Path  # where its vocab.json / merges.txt are (the package's own for fairseq files)
    layout: str = "safetensors"  # safetensors (ours) | modelscope | hf | fairseq | preset (loader.load_model)
    stored_dtype: str = "float32"  # the weights' precision in the file (loading upcasts to float32)
    min_confidence: float | None = None  # ours: a calibrated "not found" threshold (grounding.json), if any
    calibration: Calibration | None = None  # ours: the fitted confidence calibration (grounding.json), if any
    card: str | None = None  # the model directory's README.md (its model card: what it was trained on), if any
    zoom: Zoom | None = None  # ours: a second look at small answers (grounding.json), if the model asks for one


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a `.safetensors` file or a torch pickle read with `weights_only=True`."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        # mmap: the file's pages are released as a whole once every tensor was copied out (see
        # convert_state_dict), instead of leaving freed fragments on the heap. Legacy (pre-zip) torch.save
        # files cannot be mapped: they are read whole, through the same restricted unpickler.
        with path.open("rb") as f:
            zipped = f.read(4) == b"PK\x03\x04"
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
    except pickle.UnpicklingError as exc:  # weights_only refused a global: code or an object, not tensors
        refused = re.search(r"GLOBAL (\S+)", str(exc))
        what = f" ({refused.group(1)})" if refused else ""
        raise CheckpointError(f"{path}: refused: the file holds Python objects besides tensors{what}, which could "
                              "run code when unpickled; only plain tensor state dicts are loaded") from None
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read weights ({first_line(exc, typed=True)})") from None
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
    if state and all(k.startswith("model.") for k in state):  # Hugging Face's base_model_prefix
        state = {k[len("model."):]: v for k, v in state.items()}
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


def _build(config: OFAConfig, state: dict[str, torch.Tensor]) -> OFAModel:
    model = meta_model(config)  # no initialisation: every tensor is the checkpoint's
    model.load_state_dict(convert_state_dict(state, model), strict=True, assign=True)
    return model.eval()


def read_settings(directory: Path) -> tuple[OFAConfig, OFATokenizer | OFAChineseTokenizer, PreprocessConfig,
                                           GenerationConfig, bool]:
    """Everything of a model directory but its weights: (config, tokenizer, preprocessing, generation, whether
    a ModelScope `configuration.json` supplied the settings)."""
    config_file = directory / "config.json"
    raw_config = _read_json(config_file)
    try:
        config = OFAConfig.from_dict(raw_config)
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
    elif isinstance(raw_config.get(_HF_SETTINGS), dict):  # our settings, kept in an HF config.json
        preprocess = PreprocessConfig.from_dict(raw_config[_HF_SETTINGS].get("preprocess", {}))
        generation = GenerationConfig.from_dict(raw_config[_HF_SETTINGS].get("generation", {}))
    if preprocess.language not in TOKENIZER_FILES:
        raise CheckpointError(f"{settings_file}: language {preprocess.language!r} is not supported "
                              f"({', '.join(TOKENIZER_FILES)})")
    for name in TOKENIZER_FILES[preprocess.language]:
        if not (directory / name).is_file():
            raise CheckpointError(f"{directory}: missing tokenizer file {name}")
    try:
        tokenizer = load_tokenizer(directory, preprocess.language)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{directory}: bad tokenizer files ({exc})") from None
    if tokenizer.vocab_size != config.vocab_size:
        raise CheckpointError(f"{directory}: tokenizer has {tokenizer.vocab_size} ids but config.json says "
                              f"vocab_size {config.vocab_size}")
    specials = (tokenizer.bos_id, tokenizer.pad_id, tokenizer.eos_id)
    if specials != (config.bos_token_id, config.pad_token_id, config.eos_token_id):
        raise CheckpointError(f"{directory}: tokenizer's <s>/<pad>/</s> ids {specials} differ from config.json's "
                              f"{(config.bos_token_id, config.pad_token_id, config.eos_token_id)}")
    return config, tokenizer, preprocess, generation, settings_file.is_file()


def read_checkpoint(path: str | Path) -> LoadedCheckpoint:
    """Read a model in any layout we read, with its tokenizer and settings, from a local path (`loader.load_model`
    is the public entry: it also takes bundled models' names and hub ids).

    - a directory with `config.json` and weights (`model.safetensors` or `pytorch_model.bin`): ours,
      ModelScope's (with `configuration.json`) or Hugging Face OFA's (without; keys may carry `model.`);
    - a `.safetensors`/`.bin` file inside such a directory;
    - a fairseq `.pt` file of OFA's (see `fairseq.py`), with the package's own BPE files.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such model directory or file")
    if path.is_file() and path.suffix in (".pt", ".pth") and not (path.parent / "config.json").is_file():
        return _load_fairseq(path)
    if path.is_file():
        if path.suffix not in (".safetensors", ".bin", ".pt", ".pth"):
            raise CheckpointError(f"{path}: not a model directory or weights file")
        directory, weights = path.parent, path
    else:
        directory = path
        weights = next((path / f for f in WEIGHT_FILES if (path / f).is_file()), None)
    config_file = directory / "config.json"
    if not config_file.is_file():
        found = sorted(directory.glob("*.pt"))
        hint = f"; for OFA's fairseq checkpoint pass the file itself: {found[0]}" if found else ""
        raise CheckpointError(f"{directory}: not a checkpoint directory (no config.json){hint}")
    if weights is None:
        raise CheckpointError(f"{directory}: no weights file ({' or '.join(WEIGHT_FILES)})")
    config, tokenizer, preprocess, generation, has_settings_file = read_settings(directory)
    layout = "hf" if not has_settings_file else "safetensors" if weights.suffix == ".safetensors" else "modelscope"
    state = read_state_dict(weights)
    stored = _stored_dtype(state)
    model = _build(config, state)
    log.info("loaded %s (%d parameters)", weights, model.num_parameters())
    return LoadedCheckpoint(model, tokenizer, preprocess, generation, directory, directory, layout, stored,
                            read_min_confidence(directory), read_calibration(directory), read_card(directory),
                            read_zoom(directory))


def load_checkpoint(path: str | Path) -> LoadedCheckpoint:
    """Deprecated (to be removed in the next release): `ofa_grounding.load_model`, which reads the same paths and
    also bundled models' names and hub ids; one layer down, `read_checkpoint`."""
    warnings.warn("load_checkpoint is deprecated and will be removed in the next release; use "
                  "ofa_grounding.load_model (or checkpoint.read_checkpoint for a local path)", DeprecationWarning,
                  stacklevel=2)
    return read_checkpoint(path)


MAX_CARD_BYTES = 1 << 20


def read_card(directory: Path) -> str | None:
    """The model card: the directory's README.md (ours and ModelScope's both keep one), at most 1 MiB."""
    path = Path(directory) / "README.md"
    if not path.is_file():
        return None
    with path.open("rb") as f:
        return f.read(MAX_CARD_BYTES).decode("utf-8", errors="replace")


def write_card(directory: Path, card: str | None) -> Path | None:
    """A model's card written to a new copy's README.md (`convert`, `export-onnx`); without a card, none (an
    older README.md there is removed: it described another model) and None."""
    path = Path(directory) / "README.md"
    if card is None:
        path.unlink(missing_ok=True)
        return None
    path.write_text(card, encoding="utf-8")
    return path


GROUNDING_FILE = "grounding.json"  # ours, beside the model's files; ModelScope ignores it


def read_grounding(directory: Path) -> dict[str, Any]:
    """A model directory's grounding.json as a dict ({} when there is none); CheckpointError if unreadable."""
    path = Path(directory) / GROUNDING_FILE
    return _read_json(path) if path.is_file() else {}


def read_min_confidence(directory: Path) -> float | None:
    """The "not found" threshold a model directory carries (compared with `GroundingResult.confidence`)."""
    value = read_grounding(directory).get("min_confidence")
    if value is not None and not (isinstance(value, (int, float)) and 0 <= value <= 1):
        raise CheckpointError(f"{Path(directory) / GROUNDING_FILE}: min_confidence must be a number in [0, 1], "
                              f"got {value!r}")
    return None if value is None else float(value)


def read_calibration(directory: Path) -> Calibration | None:
    """The confidence calibration a model directory carries (`ofa-ground calibrate --write`), if any."""
    record = read_grounding(directory).get("calibration")
    if record is None:
        return None
    try:
        return Calibration.from_json(record)
    except ValueError as exc:
        raise CheckpointError(f"{Path(directory) / GROUNDING_FILE}: {exc}") from None


def read_zoom(directory: Path) -> Zoom | None:
    """The second look at small answers a model directory asks for (grounding.json's "zoom"), if any."""
    record = read_grounding(directory).get("zoom")
    if record is None:
        return None
    try:
        return Zoom.from_json(record)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{Path(directory) / GROUNDING_FILE}: {exc}") from None


def write_calibration(directory: Path, calibration: Calibration) -> Path:
    """Store `calibration` in the directory's grounding.json, keeping its other keys; returns the file."""
    return _write_grounding(directory, {**read_grounding(directory), "calibration": calibration.to_json()})


def write_grounding(directory: Path, min_confidence: float | None, calibration: Calibration | None,
                    zoom: Zoom | None = None) -> Path | None:
    """What a model carries besides its weights (its "not found" threshold, its calibration, its second look at
    small answers) written to a new copy's grounding.json (`convert`, `export-onnx`), replacing the file; when
    it has none of them, no file (an older one there is removed: it belonged to another model) and None."""
    data: dict[str, Any] = {}
    if min_confidence is not None:
        data["min_confidence"] = min_confidence
    if zoom is not None:
        data["zoom"] = zoom.to_json()
    if calibration is not None:
        data["calibration"] = calibration.to_json()
    if not data:
        (Path(directory) / GROUNDING_FILE).unlink(missing_ok=True)
        return None
    return _write_grounding(directory, data)


def _write_grounding(directory: Path, data: dict[str, Any]) -> Path:
    path = Path(directory) / GROUNDING_FILE
    partial = path.with_name(path.name + ".partial")
    try:
        partial.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        partial.replace(path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise CheckpointError(f"{path}: cannot write ({exc.strerror or exc})") from None
    return path


def _load_fairseq(path: Path) -> LoadedCheckpoint:

    state, model_args, task_args = read_fairseq(path)
    embed = state.get("encoder.embed_tokens.weight", state.get("decoder.embed_tokens.weight"))
    if embed is None:
        raise CheckpointError(f"{path}: fairseq checkpoint without token embeddings")
    config, preprocess, generation = config_from_fairseq(model_args, task_args, embed.shape[0])
    tokenizer = OFATokenizer.default()
    if tokenizer.vocab_size != config.vocab_size:
        raise CheckpointError(f"{path}: {config.vocab_size} token embeddings, but OFA's English vocabulary has "
                              f"{tokenizer.vocab_size} ids (a Chinese or custom-vocabulary checkpoint?)")
    stored = _stored_dtype(state)
    try:
        model = _build(config, state)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    return LoadedCheckpoint(model, tokenizer, preprocess, generation, path, ASSETS_DIR, "fairseq", stored)


def _stored_dtype(state: dict[str, torch.Tensor]) -> str:
    counts: dict[str, int] = {}
    for v in state.values():
        if v.is_floating_point():
            key = str(v.dtype).removeprefix("torch.")
            counts[key] = counts.get(key, 0) + v.numel()
    return max(counts, key=counts.get) if counts else "float32"


LAYOUTS = ("safetensors", "modelscope", "hf")  # as `ofa-ground convert --to` names them
_OLD_LAYOUT_NAMES = {"ours": "safetensors"}  # still accepted by save_checkpoint and save_settings
_HF_SETTINGS = "ofa_grounding"  # our preprocessing and decoding settings inside an HF config.json


def save_settings(directory: str | Path, config: OFAConfig, tokenizer_dir: str | Path, preprocess: PreprocessConfig,
                  generation: GenerationConfig, layout: str = "safetensors") -> Path:
    """Everything of a model directory but its weights (see `save_checkpoint`; `read_settings` reads it)."""
    layout = _OLD_LAYOUT_NAMES.get(layout, layout)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config_json = {"model_type": "ofa", **config.to_dict()}
    if layout == "hf":
        config_json = {"architectures": ["OFAModel"], **config_json,
                       _HF_SETTINGS: {"preprocess": preprocess.to_dict(), "generation": generation.to_dict()}}
    (directory / "config.json").write_text(json.dumps(config_json, indent=2))
    beam = generation.to_dict()
    beam.pop("num_bins")  # not a generator argument: the reference derives it (and rejects the key here)
    beam["constraint_range"] = ",".join(map(str, generation.constraint_range)) if generation.constraint_range else None
    block = {"type": "ofa", "beam_search": {k: v for k, v in beam.items() if v is not None},
             "imagenet_default_mean_and_std": tuple(preprocess.mean) == PreprocessConfig.IMAGENET_MEAN,
             **{k: v for k, v in preprocess.to_dict().items() if k not in ("mean", "std")}}
    settings = {"framework": "pytorch", "task": "visual-grounding", "pipeline": {"type": "visual-grounding"},
                "model": block}
    (directory / "configuration.json").unlink(missing_ok=True)
    if layout != "hf":
        (directory / "configuration.json").write_text(json.dumps(settings, indent=2))
    for name in TOKENIZER_FILES.get(preprocess.language, TOKENIZER_FILES["en"]):
        (directory / name).write_bytes((Path(tokenizer_dir) / name).read_bytes())
    return directory


def save_checkpoint(directory: str | Path, model: OFAModel, tokenizer_dir: str | Path,
                    preprocess: PreprocessConfig, generation: GenerationConfig,
                    metadata: dict[str, str] | None = None, dtype: torch.dtype | None = None,
                    layout: str = "safetensors") -> Path:
    """Write a model directory in one of `LAYOUTS` ("ours", the old name of "safetensors", is accepted too).

    - safetensors (ours): config.json, configuration.json (ModelScope's settings file), model.safetensors, vocab.json,
      merges.txt;
    - modelscope: the same with `pytorch_model.bin` holding every key an OFA checkpoint has (the tied output
      projection, and zero-initialised tensors for the parts grounding never runs): ModelScope's loader
      prefers a model.safetensors when there is one, and safetensors stores the tied projection only
      once, so the reference would re-initialise it at random (checked with modelscope 1.40.2);
    - hf: Hugging Face OFA's layout (config.json with `architectures`, `pytorch_model.bin` as above,
      vocab.json, merges.txt); our preprocessing/decoding settings ride along in config.json under
      "ofa_grounding" so that a round trip keeps them.
    `dtype=torch.float16` stores the weights at half size (loading upcasts them).
    """
    layout = _OLD_LAYOUT_NAMES.get(layout, layout)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if model.encoder.embed_images.fused:
        raise ValueError("this model's backbone was fused for inference (Grounder(fuse=True)); save the model "
                         "as loaded by load_model instead")
    directory = save_settings(directory, model.config, tokenizer_dir, preprocess, generation, layout)
    stored = model
    if dtype is not None and dtype != next(model.parameters()).dtype:
        stored = OFAModel(model.config).to(dtype)
        stored.load_state_dict(model.state_dict())
    for name in WEIGHT_FILES:  # one weights file per folder, so that every reader takes the same one
        (directory / name).unlink(missing_ok=True)
    if layout == "safetensors":
        save_model(stored, str(directory / "model.safetensors"), metadata={"format": "pt", **(metadata or {})})
    else:
        torch.save(full_state_dict(stored), directory / "pytorch_model.bin")
    return directory


def full_state_dict(model: OFAModel) -> dict[str, torch.Tensor]:
    """Every key an OFA checkpoint has (ModelScope/HF names): ours plus the tied copies and unused parts."""
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
