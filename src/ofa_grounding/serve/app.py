"""The HTTP service: a FastAPI app over one `Grounder`, with micro-batching, limits and a web page.

    POST /v1/ground   multipart (image file + one or more `text` fields) or JSON
                      ({"image": base64, "texts": [...]}, or "image_url" when URL fetching is enabled)
    GET  /v1/model    what is loaded, the limits and the batching settings
    GET  /healthz     liveness, queue depth and counters
    GET  /            the web page (static assets under /static, no external CDN)
    GET  /docs        OpenAPI docs (Swagger UI, served locally when `swagger-ui-bundle` is installed)

Every error is JSON `{"error": {"code": ..., "message": ...}}` with one status per kind of problem:
413 for too much data (request bytes, image pixels), 415 for an unsupported content type, 422 for
invalid content (no or unreadable image, no text, too many texts, text too long, bad JSON), 503 with
`Retry-After` when the queue is full.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import sys
import time
import urllib.request
from collections.abc import Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from .. import __version__
from ..image import ImageLoadError, ImageTooLargeError, load_image
from ..predictor import Grounder, GroundingResult
from ..presets import match_preset
from .batcher import MicroBatcher, Overloaded
from .config import ServeConfig, ServerSettings

__all__ = ["ServeConfig", "ServerSettings", "app_from_settings", "create_app"]

STATIC = Path(__file__).parent / "static"
# One line per request (method, path, status, milliseconds, and for /v1/ground the number of descriptions; never
# the uploaded content), at INFO. Shown on stderr by default, like uvicorn's access log, unless the program
# configures this logger itself (a handler of its own; or setLevel(logging.WARNING) to silence it).
access_log = logging.getLogger("ofa_grounding.serve.access")


class APIError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def _error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


class BodyLimit:
    """ASGI middleware: refuse bodies over `limit` bytes, by Content-Length or while they stream in."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        too_big = f"request body is over the limit of {self.limit} bytes"
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _error_response(413, "request_too_large", too_big)(scope, receive, send)
        seen = 0

        async def limited_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise APIError(413, "request_too_large", too_big)
            return message

        await self.app(scope, limited_receive, send)


class _Stderr(logging.StreamHandler):
    """A handler writing to whatever sys.stderr is when a record comes (as logging's last-resort handler)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _show_access_log() -> None:
    """Give `access_log` a stderr handler at INFO, unless it has handlers already (configured by the program)."""
    if access_log.handlers:
        return
    handler = _Stderr()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    access_log.addHandler(handler)
    access_log.setLevel(logging.INFO)
    access_log.propagate = False  # not again through the root logger (`-v` gives it a handler)


class AccessLog:
    """ASGI middleware: log every HTTP request as 'POST /v1/ground 200 41.3 ms 2 descriptions' when it ends.
    A route adds the number of descriptions by setting `request.state.descriptions`."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500  # an exception that escapes becomes a 500 further out
        state = scope.setdefault("state", {})

        async def send_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            ms = 1000 * (time.perf_counter() - start)
            n = state.get("descriptions")
            access_log.info("%s %s %d %.1f ms%s", scope["method"], scope["path"], status, ms,
                            "" if n is None else f" {n} description{'' if n == 1 else 's'}")


def _result_json(r: GroundingResult) -> dict[str, Any]:
    """A result as the service answers it: `GroundingResult.to_dict`'s fields without the token ids, with
    `truncated` and always the alternatives (`confidence` is the calibrated probability when `calibrated`)."""
    return r.to_dict(alternatives=True, tokens=False, truncated=True)


def fetch_url(url: str, max_bytes: int, timeout_s: float) -> bytes:
    """GET an http(s) URL, at most `max_bytes` (only called when URL fetching is enabled)."""
    if not url.startswith(("http://", "https://")):
        raise APIError(422, "bad_image_url", "image_url must be an http:// or https:// URL")
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            data = response.read(max_bytes + 1)
    except Exception as exc:
        raise APIError(422, "unreadable_image", f"image_url: cannot fetch ({str(exc).splitlines()[0]})") from None
    if len(data) > max_bytes:
        raise APIError(413, "image_too_large", f"image_url: more than {max_bytes} bytes")
    return data


async def _read_request(request: Request, config: ServeConfig) -> tuple[bytes, list[Any]]:
    """(image bytes, texts) from a multipart form or a JSON body."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        body = await request.body()  # kept (the form is parsed from it), capped by BodyLimit
        try:
            form = await request.form(max_files=2, max_fields=config.max_texts + 8)
        except HTTPException as exc:  # Starlette's multipart errors: answered in our error shape
            if "fields" in str(exc.detail):
                raise APIError(422, "too_many_texts", f"too many form fields; the limit is {config.max_texts} "
                                                      "descriptions per request") from None
            raise APIError(422, "bad_multipart", f"malformed multipart body ({exc.detail})") from None
        files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            raise APIError(422, "missing_image", "multipart field 'image' must be an image file")
        if len(files) > 1:
            raise APIError(422, "too_many_images", f"{len(files)} files in one form; send one image per request")
        texts = list(form.getlist("text"))
        if any(isinstance(t, str) and any("\x80" <= c <= "\xff" for c in t) for t in texts):
            _check_utf8_fields(body, request.headers.get("content-type", ""))
        return await upload.read(), texts
    if ctype == "application/json":
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise APIError(422, "bad_json", f"request body is not valid JSON ({exc})") from None
        if not isinstance(body, dict):
            raise APIError(422, "bad_json", "JSON body must be an object with 'image' and 'texts'")
        texts = body.get("texts", body.get("text", []))
        texts = [texts] if isinstance(texts, str) else texts
        if not isinstance(texts, list):
            raise APIError(422, "bad_text", "'texts' must be a list of strings")
        if "image_url" in body and "image" not in body:
            if not config.allow_urls:
                raise APIError(422, "urls_disabled", "image_url is disabled on this server; send the image as base64")
            if not isinstance(body["image_url"], str):
                raise APIError(422, "bad_image_url", "'image_url' must be a string")
            return await run_in_threadpool(fetch_url, body["image_url"], config.max_request_bytes,
                                           config.url_timeout_s), texts
        image = body.get("image")
        if not isinstance(image, str) or not image:
            raise APIError(422, "missing_image", "JSON field 'image' must be a base64-encoded image")
        if image.startswith("data:"):  # a data URL, as browsers make them
            image = image.partition(",")[2]
        try:
            return base64.b64decode(image, validate=True), texts
        except (binascii.Error, ValueError):
            raise APIError(422, "unreadable_image", "JSON field 'image' is not valid base64") from None
    raise APIError(415, "unsupported_content_type",
                   f"content type {ctype or '(none)'!r}: send multipart/form-data or application/json")


def _check_utf8_fields(body: bytes, content_type: str) -> None:
    """Starlette decodes a form field that is not UTF-8 as Latin-1 (mojibake, silently); look at the raw
    bytes of the text fields instead (only called when a text has characters that such a decoding makes)."""
    from email import policy
    from email.parser import BytesParser

    message = BytesParser(policy=policy.HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    for i, part in enumerate(p for p in message.iter_parts() if p.get_param("name", header="content-disposition")
                             == "text"):
        try:
            (part.get_payload(decode=True) or b"").decode("utf-8")
        except UnicodeDecodeError:
            raise APIError(422, "bad_text", f"description {i} is not valid UTF-8") from None


def _check_texts(texts: Sequence[Any], config: ServeConfig) -> list[str]:
    if not texts:
        raise APIError(422, "missing_text", "give at least one description ('text' field)")
    if len(texts) > config.max_texts:
        raise APIError(422, "too_many_texts", f"{len(texts)} descriptions; the limit is {config.max_texts} per request")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise APIError(422, "bad_text", f"description {i} is not a string")
        if len(t) > config.max_text_chars:
            raise APIError(422, "text_too_long",
                           f"description {i} has {len(t)} characters; the limit is {config.max_text_chars}")
    return list(texts)


_GROUND_BODY = {
    "requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["image", "text"], "properties": {
            "image": {"type": "string", "format": "binary"},
            "text": {"type": "array", "items": {"type": "string"}, "description": "one or more descriptions"}}}},
        "application/json": {"schema": {"type": "object", "required": ["texts"], "properties": {
            "image": {"type": "string", "description": "base64 image bytes (or a data: URL)"},
            "image_url": {"type": "string", "description": "fetched only when the server allows URLs"},
            "texts": {"type": "array", "items": {"type": "string"}}}}}}},
    "responses": {"200": {"description": "one result per description, in order", "content": {
        "application/json": {"example": {"width": 640, "height": 480, "results": [
            {"text": "the red circle", "box": [12.5, 40.0, 98.1, 130.7], "score": -0.21, "confidence": 0.93,
             "found": True, "truncated": False, "alternatives": [{"box": [10.0, 38.2, 99.0, 131.0], "score": -0.9,
                                                                  "confidence": 0.028}],
             "raw_confidence": 0.031, "calibrated": True}]}}}}},
}


def create_app(grounder: Grounder, config: ServeConfig | None = None, model_name: str = "model") -> FastAPI:
    """The service around a loaded grounder (one model thread; see `batcher.MicroBatcher`)."""
    config = config or ServeConfig()
    batcher = MicroBatcher(grounder.predict_batch, config.max_batch, config.max_wait_ms / 1000, config.max_queue)
    model_info = {
        "name": model_name,
        "preset": match_preset(grounder.model.config, grounder.preprocess.patch_image_size) or "custom",
        "parameters": grounder.num_parameters,
        "dtype": grounder.dtype, "device": str(grounder.device),
        "image_size": grounder.preprocess.patch_image_size, "version": __version__,
        "calibrated": grounder.calibration is not None,
        "card": "/v1/model/card" if grounder.card else None,
    }

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        yield
        await batcher.stop()

    docs = _local_swagger()
    app = FastAPI(title="ofa-grounding", version=__version__, lifespan=lifespan,
                  description="Visual grounding: the box of the object a description refers to.",
                  docs_url=None if docs else "/docs", redoc_url=None)
    app.state.batcher, app.state.config = batcher, config
    app.add_middleware(BodyLimit, limit=config.max_request_bytes)
    app.add_middleware(AccessLog)  # the outermost of ours: it sees BodyLimit's refusals too
    _show_access_log()

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return _error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        first = str(exc).splitlines()[0] if str(exc) else ""
        return _error_response(500, "internal_error", f"{type(exc).__name__}: {first}")

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error_response(422, "invalid_request", str(exc.errors()[0].get("msg", exc)))

    @app.post("/v1/ground", openapi_extra=_GROUND_BODY, summary="Ground descriptions in an image")
    async def ground(request: Request) -> JSONResponse:
        data, texts = await _read_request(request, config)
        texts = _check_texts(texts, config)
        request.state.descriptions = len(texts)  # for the access log
        try:
            image: Image.Image = await run_in_threadpool(load_image, data, config.max_pixels)
        except ImageTooLargeError as exc:
            raise APIError(413, "image_too_large", str(exc)) from None
        except ImageLoadError as exc:
            raise APIError(422, "unreadable_image", str(exc)) from None
        try:
            results = await batcher.submit(image, texts)
        except Overloaded as exc:
            raise APIError(503, "overloaded", f"{exc}; retry later",
                           {"Retry-After": str(config.retry_after_s)}) from None
        return JSONResponse({"width": image.width, "height": image.height,
                             "results": [_result_json(r) for r in results]})

    @app.get("/v1/model", summary="The loaded model, limits and batching settings")
    async def model() -> dict[str, Any]:
        limits = {k: v for k, v in asdict(config).items() if k not in ("max_batch", "max_wait_ms", "max_queue")}
        return {**model_info, "limits": limits,
                "batching": {"max_batch": config.max_batch, "max_wait_ms": config.max_wait_ms,
                             "max_queue": config.max_queue}}

    @app.get("/v1/model/card", summary="The model card: what the model was trained on and cannot do",
             response_class=PlainTextResponse, responses={404: {"description": "the model has no card"}})
    async def model_card() -> PlainTextResponse:
        if not grounder.card:
            raise APIError(404, "no_model_card", "the loaded model has no model card (README.md in its directory)")
        return PlainTextResponse(grounder.card, media_type="text/plain; charset=utf-8")

    @app.get("/healthz", summary="Liveness and counters")
    async def healthz() -> dict[str, Any]:
        s = batcher.stats
        return {"status": "ok", "queued": batcher.queued, "requests": s.requests, "batches": s.batches,
                "descriptions": s.descriptions, "rejected": s.rejected, "largest_batch": s.largest_batch}

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    if docs:
        _add_local_docs(app, docs)
    return app


def _local_swagger() -> Path | None:
    """Swagger UI's files from the `swagger-ui-bundle` package, if installed (FastAPI's default uses a CDN)."""
    try:
        from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-not-found]
    except ImportError:
        return None
    return Path(swagger_ui_path)


def _add_local_docs(app: FastAPI, path: Path) -> None:
    from fastapi.openapi.docs import get_swagger_ui_html

    app.mount("/swagger-ui", StaticFiles(directory=path), name="swagger")
    app.openapi_version = "3.0.3"  # the bundled Swagger UI 4 renders OpenAPI 3.0 documents only

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Any:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="ofa-grounding API",
                                   swagger_js_url="/swagger-ui/swagger-ui-bundle.js",
                                   swagger_css_url="/swagger-ui/swagger-ui.css",
                                   swagger_favicon_url="/static/favicon.svg")


def app_from_settings(settings: ServerSettings) -> FastAPI:
    """The service around the model `settings` names, loaded here: what each process of `ofa-ground serve
    --workers N` runs (uvicorn calls `functools.partial(app_from_settings, settings)` as its app factory)."""
    import torch

    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    grounder = Grounder.from_pretrained(settings.model, device=settings.device, dtype=settings.dtype,
                                        cache_mb=settings.cache_mb, cache_dir=settings.cache_dir,
                                        batch_size=settings.batch_size, max_pixels=settings.service.max_pixels,
                                        **({} if settings.min_confidence is None
                                           else {"min_confidence": settings.min_confidence}))
    return create_app(grounder, settings.service, model_name=settings.model or "bundled demo")
