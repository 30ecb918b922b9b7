"""The package's exceptions, in a module that imports nothing: the CLI reads them without loading torch, and
no module needs another one's internals to raise or catch them."""

from __future__ import annotations

__all__ = ["CheckpointError", "DataError", "ImageLoadError", "ImageTooLargeError", "first_line"]


class CheckpointError(ValueError):
    """A model directory or weights file is unusable; the message says which file or keys and why."""


class DataError(ValueError):
    """A dataset input is unusable (raised for the first problem in strict mode, or for a bad path)."""


class ImageLoadError(ValueError):
    """An image could not be read; the message names the input and the reason in one line."""


class ImageTooLargeError(ImageLoadError):
    """The image has more pixels than allowed (checked from its header, before decoding)."""


def first_line(exc: BaseException, typed: bool = False) -> str:
    """The first non-blank line of an exception's message, stripped, for one-line errors (the exception's type
    name for a blank message); `typed`: "TypeName: first line" (nothing after the colon for a blank message)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if typed:
        return f"{type(exc).__name__}: {lines[0] if lines else ''}"
    return lines[0] if lines else type(exc).__name__
