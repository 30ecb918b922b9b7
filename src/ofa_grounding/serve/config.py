"""The service's settings (stdlib only, so the CLI can show them without the serve extra): `ServeConfig`, the
limits and batching of one app, and `ServerSettings`, everything a server process needs to load its model and
build that app."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ServeConfig", "ServerSettings"]


@dataclass
class ServeConfig:
    max_request_bytes: int = 10 * 2**20  # whole request body
    max_pixels: int = 40_000_000  # per image, checked from its header before decoding
    max_texts: int = 16  # descriptions per request
    max_text_chars: int = 500  # per description (the model reads at most 256 tokens of the prompt + text)
    max_batch: int = 16  # descriptions per model call
    max_wait_ms: float = 5.0  # how long an idle model waits to fill a batch
    max_queue: int = 64  # requests waiting; beyond it: 503
    retry_after_s: int = 1
    allow_urls: bool = False  # JSON "image_url": fetched only when enabled
    allow_private_urls: bool = False  # and then from public addresses only, unless this is set too
    url_timeout_s: float = 10.0
    # The whole request body must arrive within this many seconds of the request's start, else 408: a client
    # trickling bytes would otherwise hold its connection and what it sent so far (up to max_request_bytes) open.
    body_timeout_s: float = 60.0


@dataclass(frozen=True)
class ServerSettings:
    """What `serve.app.app_from_settings` loads and serves: `ofa-ground serve --workers N` hands one to each
    server process as the argument of uvicorn's app factory (pickled by multiprocessing, not through the
    environment)."""

    model: str | None = None  # a model name as `model_names` reads it; None: the bundled demo model
    device: str | None = None  # torch device; None: cpu
    precision: str = "fp32"  # "fp32" or "bf16" (`Grounder.from_pretrained`)
    cache_mb: float = 64  # backbone-output cache
    cache_dir: str | None = None  # hub cache for model ids; None: the hubs' own
    batch_size: int = 8  # descriptions encoded and decoded together
    min_confidence: float | None = None  # None: the model folder's grounding.json, if any
    threads: int | None = None  # torch threads of the process; None: torch's own (OMP_NUM_THREADS)
    zoom: bool = True  # the second look at small answers the model folder's grounding.json asks for, if any
    service: ServeConfig = field(default_factory=ServeConfig)
