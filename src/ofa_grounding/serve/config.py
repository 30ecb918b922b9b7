"""The service's limits and batching settings (stdlib only, so the CLI can show them without the serve extra)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ServeConfig"]


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
    url_timeout_s: float = 10.0
