"""The package's exceptions, in a module that imports nothing: the CLI reads them without loading torch, and
no module needs another one's internals to raise or catch them."""

from __future__ import annotations

__all__ = ["CheckpointError", "DataError", "ImageLoadError", "ImageTooLargeError"]


class CheckpointError(ValueError):
    """A model directory or weights file is unusable; the message says which file or keys and why."""


class DataError(ValueError):
    """A dataset input is unusable (raised for the first problem in strict mode, or for a bad path)."""


class ImageLoadError(ValueError):
    """An image could not be read; the message names the input and the reason in one line."""


class ImageTooLargeError(ImageLoadError):
    """The image has more pixels than allowed (checked from its header, before decoding)."""
