"""HTTP service and web page (`ofa-ground serve`; needs the `serve` extra: fastapi, uvicorn, python-multipart).

`ServeConfig` and `ServerSettings` import without the extra (the CLI shows their defaults in --help); `create_app`
and `app_from_settings` need it.
"""

from typing import Any

from .config import ServeConfig, ServerSettings

__all__ = ["ServeConfig", "ServerSettings", "app_from_settings", "create_app"]


def __getattr__(name: str) -> Any:
    if name in ("app_from_settings", "create_app"):
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
