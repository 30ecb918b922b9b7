"""`ofa-ground` command line: a thin layer over the Python API.

Exit codes: 0 success; 2 bad usage (wrong arguments, unusable --model, unreadable --jsonl file);
1 when any input (image or description) failed; 130 on Ctrl-C; 141 (128 + SIGPIPE, what a shell reports for
`yes | head`'s writer) when the reader of stdout closed it early, as `ofa-ground predict ... | head` does: quietly,
the rest of the output dropped. Errors go to stderr, one line each.

One module per command, each with `add_parser(subparsers)` (which sets `func` to its `run(args) -> int`);
`common` holds what they share, `loading` the model-loading call sites. `main` runs the command and turns
whatever it raises into an exit code in one place, `common.handle_error`.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Sequence

from .. import __version__
from . import bench, calibrate, convert, evaluate, export_onnx, info, make_synthetic, predict, serve, train
from .common import HelpFormatter, handle_error, setup_logging

__all__ = ["build_parser", "main"]

EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: the exit status of a Unix tool whose reader went away

# --help's order
COMMANDS = (predict, evaluate, calibrate, train, convert, info, export_onnx, serve, make_synthetic, bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ofa-ground", description="Visual grounding with OFA: find the box a "
                                     "description refers to.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    # every command's --help shows its options' defaults (a command may pass another formatter_class)
    sub = parser.add_subparsers(dest="command", required=True,
                                parser_class=functools.partial(argparse.ArgumentParser, formatter_class=HelpFormatter))
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # exits with 2 on bad usage
    setup_logging(getattr(args, "verbose", False))
    try:
        code = args.func(args)
        sys.stdout.flush()  # here, so that a reader gone away is met inside the try, not at interpreter exit
        return code
    except BrokenPipeError:
        return _reader_gone()
    except (Exception, KeyboardInterrupt) as exc:
        return handle_error(exc)


def _reader_gone() -> int:
    """stdout's reader closed the pipe (`... | head`): no message, and the rest of the output goes to devnull,
    so that Python's flush at exit does not fail again (the Python docs' note on SIGPIPE)."""
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError, AttributeError):  # a stdout without a file descriptor (captured): no flush at exit
        return EXIT_BROKEN_PIPE
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)
    return EXIT_BROKEN_PIPE
