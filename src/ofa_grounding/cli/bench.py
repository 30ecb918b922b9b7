"""`ofa-ground bench`: registered here; its arguments, measurements and report live in `ofa_grounding.bench`."""

from __future__ import annotations

import argparse
from typing import Any

from .. import bench  # stdlib-only at import time


def add_parser(sub: Any) -> None:
    b = sub.add_parser("bench", help="latency / throughput / memory, ours beside the reference",
                       description=bench.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_arguments(b)
    b.set_defaults(func=bench.run)
