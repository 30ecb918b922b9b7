"""ofa-grounding: visual grounding with OFA in plain PyTorch.

    from ofa_grounding import Grounder
    g = Grounder.from_pretrained("path/to/model_dir")
    result = g.predict("photo.jpg", "the man in the blue shirt")
    result.box  # (x0, y0, x1, y1) in pixels
"""

from .checkpoint import CheckpointError, load_checkpoint
from .config import GenerationConfig, OFAConfig, PreprocessConfig
from .image import ImageLoadError
from .predictor import DEFAULT_MODEL, Alternative, Grounder, GroundingResult
from .presets import get_preset, list_presets

__version__ = "0.1.0"

__all__ = ["DEFAULT_MODEL", "Alternative", "CheckpointError", "GenerationConfig", "Grounder", "GroundingResult",
           "ImageLoadError", "OFAConfig", "PreprocessConfig", "__version__", "get_preset", "list_presets",
           "load_checkpoint"]
