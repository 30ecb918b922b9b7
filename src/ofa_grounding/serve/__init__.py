"""HTTP service and web page (`ofa-ground serve`; needs the `serve` extra: fastapi, uvicorn, python-multipart).

`ServeConfig` imports without the extra (the CLI shows its defaults in --help); `create_app` needs it.
"""

from typing import Any

from .config import ServeConfig

__all__ = ["ServeConfig", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
