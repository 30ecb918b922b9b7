"""ofa-grounding: visual grounding with OFA in plain PyTorch.

    from ofa_grounding import Grounder
    g = Grounder.from_pretrained("path/to/model_dir")
    result = g.predict("photo.jpg", "the man in the blue shirt")
    result.box  # (x0, y0, x1, y1) in pixels
"""

from .config import GenerationConfig, OFAConfig, PreprocessConfig
from .errors import CheckpointError, ImageLoadError
from .model_names import bundled_models
from .presets import get_preset, list_presets

__version__ = "0.1.0"

# Imported on first use (PEP 562): these need torch, which takes seconds to import; `ofa-ground --help`
# and the configuration classes do not.
_LAZY = {"DEFAULT_MODEL": "loader", "Alternative": "predictor", "Calibration": "calibration", "Grounder": "predictor",
         "GroundingResult": "predictor", "load_model": "loader",
         "load_checkpoint": "checkpoint"}  # deprecated (warns when called): load_model; gone in the next release


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["DEFAULT_MODEL", "Alternative", "Calibration", "CheckpointError", "GenerationConfig", "Grounder",
           "GroundingResult", "ImageLoadError", "OFAConfig", "PreprocessConfig", "__version__", "bundled_models",
           "get_preset", "list_presets", "load_model"]
