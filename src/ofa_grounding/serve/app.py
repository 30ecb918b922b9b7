"""The HTTP service: a FastAPI app over one `Grounder`, with micro-batching, limits and a web page.

    POST /v1/ground   multipart (image file + one or more `text` fields) or JSON
                      ({"image": base64, "texts": [...]}, or "image_url" when URL fetching is enabled)
    GET  /v1/model    what is loaded, the limits and the batching settings
    GET  /healthz     liveness, queue depth and counters
    GET  /            the web page (static assets under /static, no external CDN)
    GET  /docs        OpenAPI docs (Swagger UI, served locally when `swagger-ui-bundle` is installed)

Every error is JSON `{"error": {"code": ..., "message": ...}}` (`ErrorBody`) with one status per kind of
problem (`ERRORS`: code -> status and when): 408 for a body that does not arrive in time, 413 for too much data
(request bytes, image pixels), 415 for an unsupported content type, 422 for invalid content (no or unreadable
image, no text, too many texts, text too long, bad JSON, unknown fields), 503 with `Retry-After` when the queue
is full. The OpenAPI document lists each operation's statuses with their codes, and the request body's schema
says exactly what is accepted (tests/serve/test_api_fuzz.py fuzzes the service against it).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import functools
import json
import logging
import sys
import time
import typing
from collections.abc import Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel, Field, create_model
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from .. import __version__
from ..data import check_unicode
from ..errors import first_line
from ..image import ImageLoadError, ImageTooLargeError, load_image
from ..predictor import Grounder, GroundingResult
from ..presets import match_preset
from .batcher import MicroBatcher, Overloaded
from .config import ServeConfig, ServerSettings
from .fetch import FetchError, fetch_url

__all__ = ["ERRORS", "ErrorBody", "ServeConfig", "ServerSettings", "app_from_settings", "create_app"]

STATIC = Path(__file__).parent / "static"
# One line per request (method, path, status, milliseconds, and for /v1/ground the number of descriptions; never
# the uploaded content), at INFO. Shown on stderr by default, like uvicorn's access log, unless the program
# configures this logger itself (a handler of its own; or setLevel(logging.WARNING) to silence it).
access_log = logging.getLogger("ofa_grounding.serve.access")


# Every error the service answers, by code: (status, when). The OpenAPI document lists each operation's codes under
# their status, and docs/serving.md's table lists them all (tests/serve/test_app.py checks both).
ERRORS: dict[str, tuple[int, str]] = {
    "request_timeout": (408, "the request body did not arrive within --body-timeout-s"),
    "request_too_large": (413, "the request body is over --max-request-mb (by Content-Length, or while it streams "
                               "in)"),
    "image_too_large": (413, "the image is over --max-pixels (read from its header, before decoding), or the "
                             "content of `image_url` over --max-request-mb"),
    "unsupported_content_type": (415, "a content type other than multipart/form-data or application/json, or none"),
    "bad_json": (422, "the body is not JSON, or not a JSON object"),
    "bad_multipart": (422, "the multipart body is malformed"),
    "unknown_field": (422, "a field the request format does not have (a form's fields are `image` and `text`, "
                           "JSON's `image`, `texts` or `text`, and `image_url` with --allow-urls)"),
    "conflicting_fields": (422, "both `texts` and `text`, or both `image` and `image_url`"),
    "missing_image": (422, "no image: no `image` file in the form, or no or an empty JSON `image`"),
    "too_many_images": (422, "more than one file in the form"),
    "unreadable_image": (422, "the image is not one Pillow reads, is damaged, or is not valid base64; or "
                              "`image_url` cannot be fetched"),
    "urls_disabled": (422, "JSON `image_url` without --allow-urls"),
    "bad_image_url": (422, "`image_url` is not an http:// or https:// URL with a host"),
    "private_image_url": (422, "`image_url` (or a redirect) names a host with no public address (loopback, "
                               "private, link-local, ...) and the server was not given --allow-private-urls"),
    "missing_text": (422, "no description (an empty or blank one is answered, with `\"found\": false`)"),
    "too_many_texts": (422, "more than --max-texts descriptions"),
    "text_too_long": (422, "a description over --max-text-chars characters"),
    "bad_text": (422, "a description that is not a string, not UTF-8 or not Unicode text; `texts` neither a "
                      "string nor a list"),
    "invalid_request": (422, "any other malformed request"),
    "no_model_card": (404, "GET /v1/model/card: the model has no card"),
    "not_found": (404, "no such path"),
    "method_not_allowed": (405, "a method the path does not have (the `Allow` header lists those it has)"),
    "overloaded": (503, "the request queue is full (--max-queue); `Retry-After` says when to try again"),
    "internal_error": (500, "the model failed (every request of that batch gets it), or another failure in the "
                            "server"),
}


class ErrorDetail(BaseModel):
    code: str = Field(description="what went wrong, as a program reads it (one of the codes listed for the status)")
    message: str = Field(description="what went wrong, as a person reads it (one line)")


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: ErrorDetail


@functools.cache
def _error_model(status: int, codes: tuple[str, ...]) -> type[ErrorBody]:
    """`ErrorBody` with `code` one of `codes` (of one status), named for OpenAPI's components."""
    every = tuple(c for c, (s, _) in ERRORS.items() if s == status)
    name = f"Error{status}" + ("" if codes == every else "".join(p.title() for c in codes for p in c.split("_")))
    detail = create_model(f"{name}Detail", __base__=ErrorDetail,
                          code=(str, Field(description=ErrorDetail.model_fields["code"].description,
                                           json_schema_extra={"enum": list(codes)})))
    return create_model(name, __base__=ErrorBody, error=(detail, ...))


def _error_responses(*codes: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses for these error codes: per status, the `ErrorBody` schema with `code` one of them."""
    by_status: dict[int, list[str]] = {}
    for code in codes:
        by_status.setdefault(ERRORS[code][0], []).append(code)
    responses: dict[int | str, dict[str, Any]] = {}
    for status, status_codes in sorted(by_status.items()):
        responses[status] = {"model": _error_model(status, tuple(status_codes)),
                             "description": "; ".join(f"`{c}`: {ERRORS[c][1]}" for c in status_codes)}
    if 503 in responses:
        responses[503]["headers"] = {"Retry-After": {"description": "seconds to wait before trying again",
                                                     "schema": {"type": "integer"}}}
    return responses


class APIError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        assert ERRORS[code][0] == status, (code, status)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def _error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


class BodyLimit:
    """ASGI middleware: refuse bodies over `limit` bytes, by Content-Length or while they stream in, and bodies that
    have not arrived `timeout_s` seconds after the request began (a client trickling bytes would otherwise hold
    its connection, and what it sent so far, for as long as it likes). Such an answer closes the connection: the
    rest of the body is not read."""

    def __init__(self, app: Any, limit: int, timeout_s: float | None = None) -> None:
        self.app, self.limit, self.timeout_s = app, limit, timeout_s

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        too_big = f"request body is over the limit of {self.limit} bytes"
        close = {"Connection": "close"}
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _error_response(413, "request_too_large", too_big, close)(scope, receive, send)
        seen, done = 0, False
        deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s

        async def limited_receive() -> dict:
            nonlocal seen, done
            if done or deadline is None:  # after the body: the wait for a disconnect, untimed
                message = await receive()
            else:
                try:
                    message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
                except asyncio.TimeoutError:  # not TimeoutError: they differ on Python 3.10
                    raise APIError(408, "request_timeout", f"the request body did not arrive within "
                                                           f"{self.timeout_s:g} s", close) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                done = not message.get("more_body", False)
                if seen > self.limit:
                    raise APIError(413, "request_too_large", too_big, close)
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


async def _read_request(request: Request, config: ServeConfig) -> tuple[bytes, list[Any]]:
    """(image bytes, texts) from a multipart form or a JSON body: exactly what `_ground_body(config)` declares."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        return await _read_form(request, config)
    if ctype == "application/json":
        return await _read_json(request, config)
    raise APIError(415, "unsupported_content_type",
                   f"content type {ctype or '(none)'!r}: send multipart/form-data or application/json")


async def _read_form(request: Request, config: ServeConfig) -> tuple[bytes, list[Any]]:
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
    unknown = sorted({name for name in form if name not in ("image", "text")})
    if unknown:
        raise APIError(422, "unknown_field", f"unknown form field {unknown[0]!r}; the fields are 'image' and 'text'")
    texts = list(form.getlist("text"))
    if any(isinstance(t, str) and any("\x80" <= c <= "\xff" for c in t) for t in texts):
        _check_utf8_fields(body, request.headers.get("content-type", ""))
    return await upload.read(), texts


async def _read_json(request: Request, config: ServeConfig) -> tuple[bytes, list[Any]]:
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise APIError(422, "bad_json", f"request body is not valid JSON ({exc})") from None
    if not isinstance(body, dict):
        raise APIError(422, "bad_json", "JSON body must be an object with 'image' and 'texts'")
    if "image_url" in body and not config.allow_urls:
        raise APIError(422, "urls_disabled", "image_url is disabled on this server; send the image as base64")
    fields = ("image", "image_url", "texts", "text") if config.allow_urls else ("image", "texts", "text")
    unknown = sorted(k for k in body if k not in fields)
    if unknown:
        raise APIError(422, "unknown_field", f"unknown JSON field {unknown[0]!r}; the fields are "
                                             + ", ".join(repr(f) for f in fields))
    if "texts" in body and "text" in body:
        raise APIError(422, "conflicting_fields", "give the descriptions as 'texts' or as 'text', not both")
    texts = body.get("texts", body.get("text", []))
    texts = [texts] if isinstance(texts, str) else texts
    if not isinstance(texts, list):
        raise APIError(422, "bad_text", "'texts' must be a list of strings")
    if "image_url" in body:
        if "image" in body:
            raise APIError(422, "conflicting_fields", "give the image as 'image' or as 'image_url', not both")
        if not isinstance(body["image_url"], str):
            raise APIError(422, "bad_image_url", "'image_url' must be a string")
        try:
            return await run_in_threadpool(fetch_url, body["image_url"], config.max_request_bytes,
                                           config.url_timeout_s, config.allow_private_urls), texts
        except FetchError as exc:
            raise APIError(exc.status, exc.code, str(exc)) from None
    image = body.get("image")
    if not isinstance(image, str) or not image:
        raise APIError(422, "missing_image", "JSON field 'image' must be a base64-encoded image")
    if image.startswith("data:"):  # a data URL, as browsers make them
        image = image.partition(",")[2]
    try:
        return base64.b64decode(image, validate=True), texts
    except (binascii.Error, ValueError):
        raise APIError(422, "unreadable_image", "JSON field 'image' is not valid base64") from None


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
        try:
            check_unicode(t)
        except ValueError:
            raise APIError(422, "bad_text", f"description {i} is not Unicode text (a lone surrogate)") from None
        if len(t) > config.max_text_chars:
            raise APIError(422, "text_too_long",
                           f"description {i} has {len(t)} characters; the limit is {config.max_text_chars}")
    return list(texts)


class GroundAlternative(BaseModel):
    box: list[float] = Field(min_length=4, max_length=4, description="[x0, y0, x1, y1] in the image's pixels")
    score: float
    confidence: float = Field(description="raw (never calibrated)")


class GroundResult(BaseModel):
    """`GroundingResult.to_dict(alternatives=True, tokens=False, truncated=True)`, field for field."""

    text: str
    box: list[float] = Field(min_length=4, max_length=4, description="[x0, y0, x1, y1] in the image's pixels")
    score: float = Field(description="mean log-probability of the best beam's tokens")
    confidence: float = Field(description="the probability that the answer is right when `calibrated`, else raw")
    found: bool
    truncated: bool = Field(description="the text was cut to the model's source length")
    alternatives: list[GroundAlternative] = Field(description="the other beams, best first")
    raw_confidence: float
    calibrated: bool
    zoomed: bool = Field(description="the box is a second look's, at a crop around a small first answer")


class GroundResponse(BaseModel):
    width: int = Field(description="the image's width in pixels (after EXIF orientation)")
    height: int
    results: list[GroundResult] = Field(description="one per description, in order")


class Batching(BaseModel):
    max_batch: int
    max_wait_ms: float
    max_queue: int


_BATCHING = tuple(Batching.model_fields)
# The request limits of /v1/model: every `ServeConfig` field but the batching ones, typed as the dataclass types them.
Limits = create_model("Limits", **{f.name: (typing.get_type_hints(ServeConfig)[f.name], ...)
                                   for f in dataclasses.fields(ServeConfig) if f.name not in _BATCHING})


class ModelInfo(BaseModel):
    name: str
    preset: str = Field(description="the size preset the model matches, or 'custom'")
    parameters: int = Field(description="as stored")
    precision: str = Field(description="'fp32' or 'bf16': the precision mode the model computes in")
    device: str
    image_size: int
    version: str
    calibrated: bool
    zoom: dict[str, float] | None = Field(description="the second look at small answers (`Zoom`'s settings), or "
                                                     "null when there is none")
    card: str | None = Field(description="'/v1/model/card', or null when the model has no card")
    limits: Limits  # type: ignore[valid-type]
    batching: Batching


class Health(BaseModel):
    status: str = Field(json_schema_extra={"enum": ["ok"]})
    queued: int = Field(description="requests waiting")
    requests: int
    batches: int = Field(description="model calls")
    descriptions: int
    rejected: int = Field(description="requests answered 503")
    largest_batch: int = Field(description="descriptions")


_GROUND_EXAMPLE = {"width": 640, "height": 480, "results": [
    {"text": "the red circle", "box": [12.5, 40.0, 98.1, 130.7], "score": -0.21, "confidence": 0.93, "found": True,
     "truncated": False, "alternatives": [{"box": [10.0, 38.2, 99.0, 131.0], "score": -0.9, "confidence": 0.028}],
     "raw_confidence": 0.031, "calibrated": True, "zoomed": False}]}

# An 8x8 red PNG, base64: the JSON example of the OpenAPI document, which Swagger UI's "Try it out" sends.
_RED_SQUARE_PNG = ("iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAFUlEQVR42mO8o6HBgA0wMeAAg1MCAO/EATxlNiNa"
                   "AAAAAElFTkSuQmCC")
# The format of JSON "image": what a JSON Schema cannot say (the bytes must be an image), named for readers and tools.
IMAGE_BASE64_FORMAT = "base64-image"


def _ground_body(config: ServeConfig) -> dict[str, Any]:
    """POST /v1/ground's request body as `_read_request` reads it (the route parses it by hand): required fields,
    types and this server's limits. Bytes and pixels are limits of the whole body and of the decoded image, which
    a schema cannot state; the description does."""
    text = {"type": "string", "maxLength": config.max_text_chars,
            "description": "a description of one object (empty or blank: answered with found false)"}
    texts = {"anyOf": [text, {"type": "array", "items": text, "minItems": 1, "maxItems": config.max_texts}],
             "description": f"one description, or a list of 1 to {config.max_texts}"}
    form = {"type": "object", "required": ["image", "text"], "additionalProperties": False, "properties": {
        "image": {"type": "string", "format": "binary",
                  "description": "the image file (any format Pillow reads: PNG, JPEG, GIF, WebP, BMP, TIFF, ...); "
                                 "the form's only file"},
        "text": {**texts, "description": f"a description; the field repeated for several (1 to {config.max_texts})"}}}
    image = {"type": "string", "format": IMAGE_BASE64_FORMAT, "minLength": 1,
             "description": "the image file (any format Pillow reads), base64-encoded (standard alphabet, padded, "
                            "no line breaks), or a data: URL of it"}
    properties: dict[str, Any] = {"image": image, "texts": texts,
                                  "text": {**texts, "description": "the same as 'texts' (give one of the two)"}}
    one_of_texts = {"oneOf": [{"required": ["texts"]}, {"required": ["text"]}]}
    if config.allow_urls:
        properties["image_url"] = {"type": "string", "format": "uri", "pattern": "^https?://[^/?#]",
                                   "description": "an http(s) URL the server fetches, instead of 'image'"}
        required: dict[str, Any] = {"allOf": [one_of_texts, {"oneOf": [{"required": ["image"]},
                                                                       {"required": ["image_url"]}]}]}
    else:
        required = {"required": ["image"], **one_of_texts}
    return {"requestBody": {"required": True, "description": (
        f"A multipart form or a JSON object; the whole body at most {config.max_request_bytes} bytes (else 413), "
        f"sent within {config.body_timeout_s:g} s (else 408); the image at most {config.max_pixels} pixels (else "
        "413)."), "content": {
        "multipart/form-data": {"schema": form, "encoding": {"image": {"contentType": "image/*"}}},
        "application/json": {"schema": {"type": "object", "additionalProperties": False, "properties": properties,
                                        **required},
                             "example": {"image": _RED_SQUARE_PNG, "texts": ["the red square"]}}}}}


def create_app(grounder: Grounder, config: ServeConfig | None = None, model_name: str = "model") -> FastAPI:
    """The service around a loaded grounder (one model thread; see `batcher.MicroBatcher`)."""
    config = config or ServeConfig()
    batcher = MicroBatcher(grounder.predict_batch, config.max_batch, config.max_wait_ms / 1000, config.max_queue)
    model_info = {
        "name": model_name,
        "preset": match_preset(grounder.model.config, grounder.preprocess.patch_image_size) or "custom",
        "parameters": grounder.num_parameters,
        "precision": grounder.precision, "device": str(grounder.device),
        "image_size": grounder.preprocess.patch_image_size, "version": __version__,
        "calibrated": grounder.calibration is not None,
        "zoom": None if grounder.zoom is None else grounder.zoom.to_json(),
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
    app.add_middleware(BodyLimit, limit=config.max_request_bytes, timeout_s=config.body_timeout_s)
    app.add_middleware(AccessLog)  # the outermost of ours: it sees BodyLimit's refusals too
    _show_access_log()

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return _error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        return _error_response(500, "internal_error", first_line(exc, typed=True))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error_response(422, "invalid_request", str(exc.errors()[0].get("msg", exc)))

    @app.exception_handler(HTTPException)  # the router's and StaticFiles' 404 and 405, in our error shape
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "invalid_request")
        return _error_response(exc.status_code, code, str(exc.detail), exc.headers)

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, exc: ClientDisconnect) -> Response:
        # The client closed the connection before its body was in: nobody to answer (499 is the access log's,
        # as nginx logs it), and no traceback for what is not a server error.
        return Response(status_code=499)

    common = _error_responses("request_too_large", "internal_error")  # any route: BodyLimit, a failure

    @app.post("/v1/ground", summary="Ground descriptions in an image", response_model=GroundResponse,
              openapi_extra=_ground_body(config),
              responses={200: {"description": "one result per description, in order",
                               "content": {"application/json": {"example": _GROUND_EXAMPLE}}},
                         **_error_responses(*(c for c, (status, _) in ERRORS.items() if status in (408, 413, 415, 422)),
                                            "overloaded", "internal_error")})
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

    @app.get("/v1/model", summary="The loaded model, limits and batching settings", response_model=ModelInfo,
             responses=common)
    async def model() -> dict[str, Any]:
        settings = dataclasses.asdict(config)
        return {**model_info, "limits": {k: v for k, v in settings.items() if k not in _BATCHING},
                "batching": {k: settings[k] for k in _BATCHING}}

    @app.get("/v1/model/card", summary="The model card: what the model was trained on and cannot do",
             response_class=Response,  # no media type of its own: the errors are JSON, the card text
             responses={200: {"description": "the model card (Markdown)", "content": {"text/plain": {
                 "schema": {"type": "string"}}}}, **_error_responses("no_model_card"), **common})
    async def model_card() -> PlainTextResponse:
        if not grounder.card:
            raise APIError(404, "no_model_card", "the loaded model has no model card (README.md in its directory)")
        return PlainTextResponse(grounder.card, media_type="text/plain; charset=utf-8")

    @app.get("/healthz", summary="Liveness and counters", response_model=Health, responses=common)
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
    openapi_31 = app.openapi

    def openapi_30() -> dict[str, Any]:  # and then the document must be 3.0 throughout
        if app.openapi_schema is None:
            app.openapi_schema = _nullable_as_30(openapi_31())
        return app.openapi_schema

    app.openapi = openapi_30  # type: ignore[method-assign]

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Any:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="ofa-grounding API",
                                   swagger_js_url="/swagger-ui/swagger-ui-bundle.js",
                                   swagger_css_url="/swagger-ui/swagger-ui.css",
                                   swagger_favicon_url="/static/favicon.svg")


def _nullable_as_30(node: Any) -> Any:
    """Pydantic writes an optional field as JSON Schema (OpenAPI 3.1) does, `anyOf: [X, {"type": "null"}]`, which
    OpenAPI 3.0 spells `X` with `nullable: true`."""
    if isinstance(node, list):
        return [_nullable_as_30(v) for v in node]
    if not isinstance(node, dict):
        return node
    any_of = node.get("anyOf")
    if isinstance(any_of, list) and len(any_of) == 2 and {"type": "null"} in any_of:
        (other,) = [s for s in any_of if s != {"type": "null"}]
        node = {**{k: v for k, v in node.items() if k != "anyOf"}, **other, "nullable": True}
    return {k: _nullable_as_30(v) for k, v in node.items()}


def app_from_settings(settings: ServerSettings) -> FastAPI:
    """The service around the model `settings` names, loaded here: what each process of `ofa-ground serve
    --workers N` runs (uvicorn calls `functools.partial(app_from_settings, settings)` as its app factory)."""
    import torch

    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    grounder = Grounder.from_pretrained(settings.model, device=settings.device, precision=settings.precision,
                                        cache_mb=settings.cache_mb, cache_dir=settings.cache_dir,
                                        batch_size=settings.batch_size, max_pixels=settings.service.max_pixels,
                                        **({} if settings.min_confidence is None
                                           else {"min_confidence": settings.min_confidence}),
                                        **({} if settings.zoom else {"zoom": None}))
    return create_app(grounder, settings.service, model_name=settings.model or "bundled demo")
