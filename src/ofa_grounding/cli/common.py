"""What the commands share: exit codes, the one-line error and warning, the arguments several commands take,
and the one error handler through which every exception becomes an exit code."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..errors import CheckpointError, DataError, ImageLoadError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """Bad usage: wrong arguments, an unusable --model, an unreadable --jsonl file (exit 2)."""


def error(message: str) -> None:
    print(f"ofa-ground: error: {message}", file=sys.stderr)


def warn(message: str) -> None:
    print(f"ofa-ground: warning: {message}", file=sys.stderr)


def handle_error(exc: BaseException) -> int:
    """The exit code for what a command raised, after its one line on stderr: 2 for bad usage and for the
    library's unusable model or dataset (UsageError, CheckpointError, DataError), 1 for an image that could
    not be read (ImageLoadError) and for anything unexpected (-v logs where it came from), 130 for Ctrl-C.
    Commands that want an option's name in front of a library's message raise UsageError themselves."""
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(exc, (UsageError, CheckpointError, DataError)):
        error(str(exc))
        return EXIT_USAGE
    if isinstance(exc, ImageLoadError):
        error(str(exc))
        return EXIT_FAILED
    logging.getLogger("ofa_grounding.cli").debug("unexpected error", exc_info=exc)
    first = str(exc).splitlines()[0] if str(exc) else ""
    error(f"unexpected {type(exc).__name__}: {first} (run with -v for details)")
    return EXIT_FAILED


class WarningLine(logging.Handler):
    """The package's warnings (a truncated description, a precision mode this CPU cannot run) as one
    'ofa-ground: warning:' line each."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno == logging.WARNING:  # errors reach the user through main()'s one line
            warn(record.getMessage())


def setup_logging(verbose: bool) -> None:
    root = logging.StreamHandler()  # -v: everything; else errors only (warnings come as one line, below)
    root.setLevel(logging.DEBUG if verbose else logging.ERROR)
    root.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.ERROR, handlers=[root])
    package = logging.getLogger("ofa_grounding")
    if not verbose and not any(isinstance(h, WarningLine) for h in package.handlers):
        package.addHandler(WarningLine(logging.WARNING))
        package.setLevel(logging.WARNING)


def min_confidence_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--min-confidence", type=float, metavar="C",
                   help="answer 'not found' (found: false) below this confidence, a probability when the model "
                        "is calibrated (default: the value in the model folder's grounding.json, if any; 0 turns "
                        "it off)")


def precision_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache-dir", help="hub cache for --model ids (default: the hubs' own caches; see README)")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                   help="fp32: the reference's arithmetic (default); bf16: bfloat16 weights, about 2x faster on "
                        "CPUs with AVX-512 BF16/AMX and on GPUs, not bit-faithful")
    p.add_argument("--cache-mb", type=float, default=64,
                   help="backbone-output cache for repeated images, in MB (default 64; 0 turns it off)")


def require_extra(extra: str, what: str, *modules: str) -> None:
    import importlib

    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise UsageError(f"{what} needs the {extra} extra ({exc.name} is missing): "
                             f"pip install 'ofa-grounding[{extra}]'") from None


def pct(x: float) -> str:
    return f"{100 * x:6.2f}"


def check_writable_image(path: Path, option: str) -> None:
    """An image file an option will write, checked before the model loads: a known image extension, a folder
    that takes it."""
    from PIL import Image

    if path.suffix.lower() not in Image.registered_extensions():
        raise UsageError(f"{option} {path}: unknown image type {path.suffix or '(no extension)'!r}; use .png or .jpg")
    existed = path.exists()
    try:
        with path.open("ab"):
            pass
    except OSError as exc:
        raise UsageError(f"{option} {path}: cannot write ({exc.strerror or exc})") from None
    if not existed:
        path.unlink()
