"""Model ids -> local directories: ModelScope ids (`damo/ofa_visual-grounding_refcoco_distilled_en`) and
Hugging Face ids (`hf:OFA-Sys/ofa-tiny`), through the hubs' standard caches.

A model already in the cache is used without any network access and without the hub client installed
(we read the caches' documented layouts). Otherwise the hub's own client downloads it (optional extras:
`pip install 'ofa-grounding[hub]'`), unless offline mode is on: `HF_HUB_OFFLINE=1` (Hugging Face's
variable; we apply it to ModelScope ids too, as ModelScope 1.x has no offline variable of its own) or
`OFA_GROUNDING_OFFLINE=1` (`OFA_GROUND_OFFLINE`, its old name, still works for a release, with a
DeprecationWarning). A missing model while offline is an error that says where to put the files.
Caches: `cache_dir` if given, else ModelScope's `MODELSCOPE_CACHE` (default ~/.cache/modelscope/hub;
models under `models/<org>/<name>`, older clients `<org>/<name>`) and Hugging Face's `HF_HUB_CACHE` /
`HF_HOME`/hub (default ~/.cache/huggingface/hub; `models--<org>--<name>/snapshots/<revision>`).
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

from .errors import CheckpointError, first_line

__all__ = ["OFFLINE_ENV", "is_hub_id", "is_offline", "resolve_model"]

_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_NEEDED = "config.json, configuration.json, pytorch_model.bin (or model.safetensors), vocab.json, merges.txt"


def is_hub_id(text: str) -> bool:
    """Whether `text` has the form of a hub id: `ORG/NAME`, `modelscope:ORG/NAME` or `hf:ORG/NAME`."""
    return _ID.fullmatch(text.removeprefix("hf:").removeprefix("modelscope:")) is not None


OFFLINE_ENV = "OFA_GROUNDING_OFFLINE"
_OLD_OFFLINE_ENV = "OFA_GROUND_OFFLINE"  # its name before the package's variables shared one prefix


def is_offline() -> bool:
    """Whether offline mode is on: HF_HUB_OFFLINE or OFA_GROUNDING_OFFLINE set to 1, true, yes or on."""
    if _OLD_OFFLINE_ENV in os.environ:
        warnings.warn(f"{_OLD_OFFLINE_ENV} is deprecated and will stop working in the next release; set "
                      f"{OFFLINE_ENV} instead", DeprecationWarning, stacklevel=2)
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", OFFLINE_ENV, _OLD_OFFLINE_ENV))


def resolve_model(model: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """A local path as is; `hf:ORG/NAME` from Hugging Face; `ORG/NAME` (or `modelscope:ORG/NAME`) from ModelScope."""
    path = Path(model)
    if path.exists():
        return path
    text = str(model)
    if text.startswith("hf:") and _ID.fullmatch(text[3:]):
        return _huggingface(text[3:], cache_dir)
    if text.startswith("modelscope:"):
        text = text[len("modelscope:"):]
    if _ID.fullmatch(text):
        return _modelscope(text, cache_dir)
    raise CheckpointError(f"{model}: no such model directory or file (hub ids look like ORG/NAME for ModelScope "
                          "or hf:ORG/NAME for Hugging Face)")


def modelscope_cache(cache_dir: str | os.PathLike | None = None) -> Path:
    default = Path.home() / ".cache" / "modelscope" / "hub"
    return Path(cache_dir or os.environ.get("MODELSCOPE_CACHE") or default)


def huggingface_cache(cache_dir: str | os.PathLike | None = None) -> Path:
    if cache_dir:
        return Path(cache_dir)
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")
    return home / "hub"


def _modelscope(model_id: str, cache_dir: str | os.PathLike | None) -> Path:
    root = modelscope_cache(cache_dir)
    for candidate in (root / "models" / model_id, root / model_id):
        if (candidate / "config.json").is_file():
            return candidate
    target = root / "models" / model_id
    if is_offline():
        raise CheckpointError(f"{model_id}: not in the ModelScope cache and offline mode is on; put its files "
                              f"({_NEEDED}) in {target}, or pass --model with a local directory")
    try:
        from modelscope.hub.snapshot_download import snapshot_download  # type: ignore[import-not-found]
    except ImportError:
        raise CheckpointError(f"{model_id}: not in the ModelScope cache ({target}); downloading it needs the "
                              "ModelScope client: pip install 'ofa-grounding[hub]'") from None
    try:
        return Path(snapshot_download(model_id, cache_dir=str(root)))
    except Exception as exc:
        raise CheckpointError(f"{model_id}: ModelScope download failed ({first_line(exc)[:200]}); "
                              f"or put its files ({_NEEDED}) in {target}") from None


def _huggingface(repo_id: str, cache_dir: str | os.PathLike | None) -> Path:
    root = huggingface_cache(cache_dir)
    repo = root / f"models--{repo_id.replace('/', '--')}"
    ref = repo / "refs" / "main"
    revision = ref.read_text().strip() if ref.is_file() else None
    snapshots = [repo / "snapshots" / revision] if revision else sorted((repo / "snapshots").glob("*"))
    for candidate in snapshots:
        if (candidate / "config.json").is_file():
            return candidate
    if is_offline():
        raise CheckpointError(f"hf:{repo_id}: not in the Hugging Face cache and offline mode is on; download it "
                              f"elsewhere (huggingface-cli download {repo_id} --cache-dir DIR) and copy DIR to "
                              f"{root}, or pass --model with a local directory")
    try:
        from huggingface_hub import snapshot_download  # type: ignore[import-not-found]
    except ImportError:
        raise CheckpointError(f"hf:{repo_id}: not in the Hugging Face cache ({repo}); downloading it needs "
                              "huggingface_hub: pip install 'ofa-grounding[hub]'") from None
    try:
        return Path(snapshot_download(repo_id, cache_dir=str(root)))
    except Exception as exc:
        raise CheckpointError(f"hf:{repo_id}: Hugging Face download failed ({first_line(exc)[:200]})") \
            from None
