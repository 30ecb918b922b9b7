"""Image side: loading with clear errors, the reference's resize and normalisation, and box <-> bin maps.

The pixel path is the reference's exactly: EXIF orientation applied to files, `convert("RGB")` (alpha
dropped, not composited), Pillow bicubic resize to a square (aspect ratio not kept), float32 `/ 255`,
then `(x - mean) / std`. Boxes map back with the float32 arithmetic of the reference's box decoder.
The forward geometry (resize ratios) and its inverse (bins -> pixels) live side by side here.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .config import DEFAULT_MAX_PIXELS
from .errors import ImageLoadError, ImageTooLargeError, first_line

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ImageInput",
    "ImageLoadError",
    "ImageTooLargeError",
    "NULL_BOX_BINS",
    "is_null_box",
    "normalize",
    "resize_square",
    "bins_to_box",
    "box_to_bins",
    "image_to_tensor",
    "load_image",
    "resize_ratios",
    "to_rgb",
]

ImageInput = Union[str, os.PathLike, bytes, Image.Image, np.ndarray]  # noqa: UP007 - a runtime alias


def _check_pixels(size: tuple[int, int], max_pixels: int | None, name: str) -> None:
    w, h = size
    if w <= 0 or h <= 0:
        raise ImageLoadError(f"{name}: image has no pixels ({w}x{h})")
    if max_pixels is not None and w * h > max_pixels:
        raise ImageTooLargeError(f"{name}: image is {w}x{h} = {w * h} pixels, over the limit of {max_pixels} "
                             "(possible decompression bomb; raise max_pixels to allow it)")


def _open_bytes(data: bytes, name: str, max_pixels: int | None) -> Image.Image:
    if not data:
        raise ImageLoadError(f"{name}: image file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Our own limit is checked from the header, before decoding; Pillow's warning adds nothing.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            _check_pixels(image.size, max_pixels, name)
            image.load()
            ImageOps.exif_transpose(image, in_place=True)  # not a copy of every image without EXIF rotation
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError(f"{name}: not an image, or a format Pillow cannot read") from None
    except Image.DecompressionBombError as exc:  # so large that Pillow refuses even to open it
        raise ImageTooLargeError(f"{name}: too many pixels ({exc})") from None
    except Exception as exc:  # Pillow's decoders raise many types for damaged files
        reason = first_line(exc)
        raise ImageLoadError(f"{name}: image is truncated or corrupt ({reason})") from None
    return image


def load_image(source: ImageInput, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Read an image as an RGB PIL image, as the reference sees it.

    - path or bytes: decoded with Pillow, EXIF orientation applied (width/height swap for rotated photos);
    - PIL image: used as given (the reference applies no EXIF transpose to PIL inputs);
    - numpy array: (H, W) grey or (H, W, 3|4) colour, uint8 (or uint16, scaled to 8 bits).
    Then converted to RGB (see `to_rgb`). Raises `ImageLoadError` with a one-line reason.
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            raise ImageLoadError(f"{path}: is a directory, not an image file")
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ImageLoadError(f"{path}: image file not found") from None
        except OSError as exc:
            raise ImageLoadError(f"{path}: cannot read image file ({exc.strerror or exc})") from None
        image = _open_bytes(data, str(path), max_pixels)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        image = _open_bytes(bytes(source), "image bytes", max_pixels)
    elif isinstance(source, Image.Image):
        _check_pixels(source.size, max_pixels, "PIL image")
        image = source
    elif isinstance(source, np.ndarray):
        image = _from_array(source, max_pixels)
    else:
        raise ImageLoadError(f"unsupported image input of type {type(source).__name__}; "
                             "give a path, bytes, a PIL image or a numpy array")
    return to_rgb(image)


def _from_array(array: np.ndarray, max_pixels: int | None) -> Image.Image:
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise ImageLoadError(f"numpy image must be (H, W), (H, W, 3) or (H, W, 4); got shape {array.shape}")
    _check_pixels((array.shape[1], array.shape[0]), max_pixels, "numpy image")
    if array.dtype == np.uint16:
        array = (array >> 8).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise ImageLoadError(f"numpy image must be uint8 (or uint16); got {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    return Image.fromarray(np.ascontiguousarray(array))


def to_rgb(image: Image.Image) -> Image.Image:
    """Pillow's `convert("RGB")`, as the reference does, except for 16-bit images.

    Pillow clips 16-bit values to 255 (a 16-bit photo turns almost white); we scale them to 8 bits
    first. Every other mode (L, LA, P, RGBA, CMYK, ...) converts exactly as in the reference: alpha is
    dropped without compositing.
    """
    if image.mode.startswith("I;16") or (image.mode == "I" and image.getextrema()[1] > 255):
        array = np.asarray(image, dtype=np.uint32) >> 8
        image = Image.fromarray(np.clip(array, 0, 255).astype(np.uint8), mode="L")
    return image if image.mode == "RGB" else image.convert("RGB")  # RGB: the same pixels, without a copy


def resize_square(image: Image.Image, size: int) -> Image.Image:
    """Pillow bicubic to size x size (aspect ratio not kept), as the reference; unchanged if already that size."""
    return image if image.size == (size, size) else image.resize((size, size), resample=Image.BICUBIC)


def normalize(pixels: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32: a true float32 `/ 255`, then `(x - mean) / std`."""
    scaled = np.ascontiguousarray(pixels, dtype=np.uint8).astype(np.float32) / np.float32(255)
    scaled = (scaled - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(scaled.transpose(2, 0, 1)))


def normalize_batch(pixels: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32 on the tensor's device; the same float32 steps as `normalize`
    (training ships uint8 from its loader processes and normalises on the model's device: 4x fewer bytes)."""
    scaled = pixels.permute(0, 3, 1, 2).float() / 255
    mean_t = torch.tensor(mean, dtype=torch.float32, device=pixels.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=pixels.device).view(1, -1, 1, 1)
    return ((scaled - mean_t) / std_t).contiguous()


def image_to_tensor(image: Image.Image, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """RGB PIL image -> (3, size, size) float32, resized with Pillow bicubic and normalised."""
    return normalize(np.asarray(resize_square(image, size)), mean, std)


def resize_ratios(size_wh: tuple[int, int], patch_image_size: int) -> tuple[float, float]:
    """(w_ratio, h_ratio) = float32(patch / W), float32(patch / H), as the reference stores them."""
    w, h = size_wh
    return float(np.float32(patch_image_size / w)), float(np.float32(patch_image_size / h))


def bins_to_box(bins: torch.Tensor, ratios: torch.Tensor, num_bins: int, max_image_size: int) -> torch.Tensor:
    """Bin indices (B, 4) int64 (x0, y0, x1, y1) -> boxes (B, 4) float32 in original-image pixels.

    `ratios` (B, 2) float32 holds (w_ratio, h_ratio) per sample. Same float32 steps as the reference:
    ((bin / (num_bins - 1)) * max_image_size) / ratio. No clamping and no reordering of corners.
    """
    box = bins / (num_bins - 1)
    box = box * max_image_size
    box[:, 0::2] /= ratios[:, 0:1]
    box[:, 1::2] /= ratios[:, 1:2]
    return box


# "Not found": the box a model trained with absent descriptions (train --absent-rate) answers for an object the
# image lacks: the four coordinates at the image's top-left corner. No real object is that small there, so any
# answer whose four bins all lie below NULL_BOX_MAX_BIN is read as "not found" (`is_null_box`).
NULL_BOX_BINS = (0, 0, 0, 0)
NULL_BOX_MAX_BIN = 25  # 2.5 % of the image side, for 1000 bins: a tenth of the smallest synthetic object


def is_null_box(bins: Sequence[int], num_bins: int = 1000) -> bool:
    return max(bins) < NULL_BOX_MAX_BIN * num_bins / 1000


def box_to_bins(box: torch.Tensor, ratios: torch.Tensor, num_bins: int, max_image_size: int) -> torch.Tensor:
    """Inverse of `bins_to_box` for training targets: pixels (B, 4) -> nearest bins (B, 4), clamped to range."""
    scale = torch.stack([ratios[:, 0], ratios[:, 1], ratios[:, 0], ratios[:, 1]], dim=1)
    normalised = box.to(torch.float64) * scale.to(torch.float64) / max_image_size
    return (normalised * (num_bins - 1)).round().clamp(0, num_bins - 1).long()
