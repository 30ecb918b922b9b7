"""`ofa-ground` command line: a thin layer over the Python API.

Exit codes: 0 success; 2 bad usage (wrong arguments, unusable --model, unreadable --jsonl file);
1 when any input (image or description) failed. Errors go to stderr, one line each.

One module per command, each with `add_parser(subparsers)` (which sets `func` to its `run(args) -> int`);
`common` holds what they share, `loading` the model-loading call sites. `main` runs the command and turns
whatever it raises into an exit code in one place, `common.handle_error`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from .. import __version__
from . import bench, calibrate, convert, evaluate, export_onnx, info, make_synthetic, predict, serve, train
from .common import handle_error, setup_logging

__all__ = ["build_parser", "main"]

# --help's order
COMMANDS = (predict, evaluate, calibrate, train, convert, info, export_onnx, serve, make_synthetic, bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ofa-ground", description="Visual grounding with OFA: find the box a "
                                     "description refers to.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # exits with 2 on bad usage
    setup_logging(getattr(args, "verbose", False))
    try:
        return args.func(args)
    except (Exception, KeyboardInterrupt) as exc:
        return handle_error(exc)
