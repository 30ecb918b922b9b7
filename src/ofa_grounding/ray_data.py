"""Grounding a Ray Data dataset: `OFAGrounder`, a callable class for `ray.data.Dataset.map_batches` (the
`ray` extra: `pip install 'ofa-grounding[ray]'`; recipe in docs/collections.md).

    ds = ray.data.read_json("rows.jsonl")                     # {"image": "a.jpg", "text": "a dog"} per row
    ds = ds.map_batches(OFAGrounder, fn_constructor_kwargs={"model": "/shared/model_dir"},
                        concurrency=4, batch_size=32, batch_format="numpy")
    ds.write_json("out/")

Ray starts `concurrency` actors; each loads the model once (`__init__`) and then grounds batch after batch
(`__call__`). A batch is a dict of numpy arrays (batch_format "numpy", Ray's default) or a pandas DataFrame
(batch_format "pandas"), with an `image` column (a path, encoded bytes or an (H, W[, C]) uint8 array per row:
what `ray.data.read_images` gives works) and a `text` column (one description per row). The answer is the
batch in the same form with five columns added (replaced, if it had them):

- `box`: [x0, y0, x1, y1] in original-image pixels, or None for a row with an `error`;
- `found`, `score`, `confidence`: as in `GroundingResult` (False, NaN, NaN for a row with an `error`);
- `error`: None, or the one-line reason the row has no answer (an unreadable image, a text that is not a
  string). A bad row never fails its batch; anything else (the model itself failing) does.

The rows of a batch go through one `Grounder.predict_batch` call: one backbone pass per distinct image, the
descriptions decoded `batch_size` at a time; boxes and tokens are those of `Grounder.predict` row by row
(scores may differ in the last bits with a batch's other rows, as for any batch).

Importing `ofa_grounding` never imports Ray; importing this module without Ray raises an ImportError whose one
line names the extra.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

try:
    import ray
except ImportError as exc:
    raise ImportError(f"ofa_grounding.ray_data needs the ray extra ({exc.name} is missing): "
                      "pip install 'ofa-grounding[ray]'") from None
import numpy as np

from .errors import ImageLoadError, first_line

__all__ = ["OUTPUT_COLUMNS", "OFAGrounder"]

OUTPUT_COLUMNS = ("box", "found", "score", "confidence", "error")


def _ray_gave_gpu() -> bool:
    """Whether Ray reserved a GPU for this worker (map_batches(..., num_gpus=1)); False outside Ray (asked there,
    `ray.get_gpu_ids` would start a local Ray instance)."""
    return ray.is_initialized() and bool(ray.get_gpu_ids())


class OFAGrounder:
    """Grounds batches of {image, text} rows; give the class (not an instance) to `Dataset.map_batches`, with
    its arguments as `fn_constructor_kwargs`.

    model: what `Grounder.from_pretrained` takes (a model directory, a bundled model's name, a hub id; None:
        the demo model). A path must exist on every node that runs an actor (a shared filesystem, or the
        same path on each); a hub id is downloaded on each node into its own cache.
    device: "cpu", "cuda", "cuda:0"... None: "cuda" where Ray reserved a GPU for this actor (map_batches'
        `num_gpus=1`), else "cpu". "cuda" without `num_gpus` fails: Ray hides the GPUs from actors that
        reserved none.
    precision: "fp32" (the default: the reference's arithmetic) or "bf16", as for `Grounder`; `dtype` is its
        deprecated alias (warns; removed in the next release).
    threads: torch's intra-op threads in this actor (pair it with map_batches' `num_cpus`); None leaves torch's
        setting (Ray sets OMP_NUM_THREADS to the actor's `num_cpus`).
    batch_size: descriptions per encoder/decoder pass (`Grounder(batch_size=...)`); map_batches' own
        `batch_size` is how many rows one call gets.
    image_column, text_column: the columns read; `image_root`: the folder relative image paths are read from
        (on every node; None: the actor's working directory, which Ray does not promise to be yours).
    **grounder_kwargs: passed on to `Grounder.from_pretrained` (`min_confidence`, `cache_mb`, `max_pixels`, ...).
    """

    def __init__(self, model: str | Path | None = None, device: str | None = None, precision: str | None = None,
                 threads: int | None = 1, batch_size: int = 8, image_column: str = "image",
                 text_column: str = "text", image_root: str | Path | None = None, *, dtype: str | None = None,
                 **grounder_kwargs: Any) -> None:
        import torch

        from .model import precision_argument
        from .predictor import Grounder

        precision = precision_argument(precision, dtype, "OFAGrounder")

        if threads is not None:
            if threads < 1:
                raise ValueError(f"threads must be at least 1, got {threads}")
            torch.set_num_threads(threads)
        if device is None:
            device = "cuda" if _ray_gave_gpu() else "cpu"
        if torch.device(device).type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r}, but this actor sees no GPU: give map_batches num_gpus=1 "
                             "(Ray hides the GPUs from actors that reserved none)")
        self.grounder = Grounder.from_pretrained(model, device=device, precision=precision, batch_size=batch_size,
                                                 **grounder_kwargs)
        self.image_column, self.text_column = image_column, text_column
        self.image_root = Path(image_root) if image_root is not None else None

    def __call__(self, batch: Any) -> Any:
        """A dict of numpy arrays (batch_format "numpy") or a pandas DataFrame ("pandas") -> the same form, with
        the columns of `OUTPUT_COLUMNS` added."""
        if not isinstance(batch, dict) and not hasattr(batch, "iloc"):  # a dict of arrays, or a pandas.DataFrame
            raise TypeError(f"OFAGrounder takes batches as dicts of numpy arrays or pandas DataFrames; got "
                            f"{type(batch).__name__}: give map_batches batch_format=\"numpy\" or \"pandas\"")
        for name, option in ((self.image_column, "image_column"), (self.text_column, "text_column")):
            if name not in batch:
                have = ", ".join(map(str, batch))
                raise ValueError(f"OFAGrounder: the batch has no column {name!r} (it has {have}); name the column "
                                 f"with {option}=")
        columns = self.ground(list(batch[self.image_column]), list(batch[self.text_column]))
        if isinstance(batch, dict):
            return {**batch, **columns}
        out = batch.copy(deep=False)
        for name, values in columns.items():
            out[name] = values
        return out

    def ground(self, images: list[Any], texts: list[Any]) -> dict[str, np.ndarray]:
        """The output columns for rows (images[i], texts[i]), as numpy arrays (`box` and `error` of dtype object)."""
        n = len(texts)
        box = np.full(n, None, dtype=object)
        found = np.zeros(n, dtype=bool)
        score = np.full(n, math.nan)
        confidence = np.full(n, math.nan)
        error = np.full(n, None, dtype=object)
        pairs, rows = [], []
        for i, (image, text) in enumerate(zip(images, texts)):
            if not isinstance(text, str):
                error[i] = f"text must be a string, got {type(text).__name__}"
                continue
            try:
                rgb = self._load(image)
            except ImageLoadError as exc:
                error[i] = str(exc)
                continue
            except Exception as exc:  # a decoder's surprise: this row fails, not the batch
                error[i] = f"cannot read image ({first_line(exc, typed=True)})"
                continue
            pairs.append((rgb, str(text)))
            rows.append(i)
        for i, result in zip(rows, self.grounder.predict_batch(pairs)):
            box[i] = list(result.box)
            found[i], score[i], confidence[i] = result.found, result.score, result.confidence
        return {"box": box, "found": found, "score": score, "confidence": confidence, "error": error}

    def _load(self, image: Any):
        if isinstance(image, (str, Path)) and self.image_root is not None:
            image = self.image_root / image  # an absolute path stays as it is
        elif not isinstance(image, (str, bytes, bytearray, memoryview, np.ndarray, Path)) \
                and hasattr(image, "to_numpy"):  # a tensor element of a pandas batch
            image = image.to_numpy()
        return self.grounder.load_image(image)
