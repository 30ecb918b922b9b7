"""`ofa-ground bench`: registered here; its arguments, measurements and report live in `ofa_grounding.bench`."""

from __future__ import annotations

from typing import Any

from .. import bench  # stdlib-only at import time
from .common import RawDescriptionHelpFormatter


def add_parser(sub: Any) -> None:
    b = sub.add_parser("bench", help="latency, throughput, memory and cold start of this package, per precision mode",
                       description=bench.__doc__, formatter_class=RawDescriptionHelpFormatter)
    bench.add_arguments(b)
    b.set_defaults(func=bench.run)
