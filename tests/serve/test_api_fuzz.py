"""The service against its own OpenAPI document, fuzzed: schemathesis reads /openapi.json and sends what it
describes, and what it does not (every check, a few hundred examples per operation, run to the end rather than
stopped at the first failure), to the app on the small fixture model, in-process. Every answer must be one the
document lists for that operation, in its shape; every request the document calls valid must be answered 200, and
every one it calls invalid refused; no server error; memory flat; /healthz still answering afterwards.
(test_app.py checks that the document, the code and docs/serving.md list the same error codes.)"""

from __future__ import annotations

import base64
import http.server
import io
import json
import logging
import os
import re
import sys
import threading
import time
from collections import Counter
from email import policy
from email.parser import BytesParser
from pathlib import Path

import pytest
from PIL import Image

from ofa_grounding.serve import ServeConfig, create_app
from ofa_grounding.serve.app import IMAGE_BASE64_FORMAT

schemathesis = pytest.importorskip("schemathesis", reason="the API fuzzer needs schemathesis (the dev extra)")
from hypothesis import strategies as st  # noqa: E402 (schemathesis brings hypothesis)
from schemathesis.engine import events, from_schema  # noqa: E402
from schemathesis.python import asgi  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = int(os.environ.get("OFA_FUZZ_EXAMPLES", "300"))  # per operation and phase
SEED = int(os.environ.get("OFA_FUZZ_SEED", "20261205"))
# Allowed over the run, besides the growth of the model's feature cache (bounded by cache_mb): the fuzzer's own
# bookkeeping lives in this process too. (Leaking 100 kB a request, a decoded image's worth, would add ~35 MB.)
RSS_GROWTH_MB = 24

# What a JSON Schema cannot say, the fuzzer has to be told: what an image is. Real files of the formats the
# schema's `image/*` names, for the form's file part, and base64 (or a data: URL) of them for JSON's
# `format: base64-image`. Without them it sends PDFs and random bytes as "valid" images.
IMAGE_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG", "image/gif": "GIF", "image/webp": "WEBP", "image/bmp": "BMP"}


@st.composite
def image_files(draw: st.DrawFn, kind: str) -> bytes:
    size = draw(st.integers(1, 64)), draw(st.integers(1, 64))
    mode = draw(st.sampled_from(["RGB", "L", "RGBA"] if kind in ("PNG", "WEBP") else ["RGB", "L"]))
    image = Image.new(mode, size, tuple(draw(st.integers(0, 255)) for _ in mode) if mode != "L" else 128)
    out = io.BytesIO()
    image.save(out, format=kind)
    return out.getvalue()


@st.composite
def base64_images(draw: st.DrawFn) -> str:
    media_type, kind = draw(st.sampled_from(sorted(IMAGE_TYPES.items())))
    data = base64.b64encode(draw(image_files(kind))).decode()
    return draw(st.sampled_from([data, f"data:{media_type};base64,{data}"]))


# With --allow-urls, `image_url` (format "uri") is fetched: valid ones are the test's own image server's files,
# so that a valid request is one the server can answer (it is on 127.0.0.1: nothing leaves the machine).
SERVED = {"shapes.png": "PNG", "small.jpg": "JPEG", "tiny.gif": "GIF", "wide.webp": "WEBP"}
IMAGE_SERVER: list[str] = []  # the image server's base URL, while one runs


def image_urls() -> st.SearchStrategy[str]:
    return st.builds(lambda name, query: f"{IMAGE_SERVER[0]}/{name}{query}", st.sampled_from(sorted(SERVED)),
                     st.sampled_from(["", "?v=1", "#frag"]))


for _media_type, _kind in IMAGE_TYPES.items():
    schemathesis.openapi.media_type(_media_type, image_files(_kind))
schemathesis.openapi.format(IMAGE_BASE64_FORMAT, base64_images())
schemathesis.openapi.format("uri", image_urls())


@pytest.fixture
def image_server(tmp_path: Path):
    """An HTTP server on 127.0.0.1 serving SERVED's images; yields the list of paths it was asked for."""
    for name, kind in SERVED.items():
        size = (640, 480) if name == "shapes.png" else (48, 24) if kind == "WEBP" else (16, 16)
        image = Image.open(ROOT / "examples" / "shapes.png").convert("RGB").resize(size)
        image.save(tmp_path / name, format=kind)
    requested: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, directory=str(tmp_path), **kwargs)

        def do_GET(self) -> None:
            requested.append(self.path)
            super().do_GET()

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    IMAGE_SERVER[:] = [f"http://127.0.0.1:{server.server_address[1]}"]
    try:
        yield requested
    finally:
        IMAGE_SERVER.clear()
        server.shutdown()


def _sent_form(request) -> dict | None:
    """A multipart request as the server reads it: a file part is a file, every other part text."""
    body = request.body if isinstance(request.body, bytes) else (request.body or "").encode()
    head = f"Content-Type: {request.headers.get('Content-Type', '')}\r\n\r\n".encode()
    message = BytesParser(policy=policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        return None
    form: dict[str, list[str]] = {}
    for part in message.iter_parts():
        value = "(a file)" if part.get_filename() is not None else \
            (part.get_payload(decode=True) or b"").decode("utf-8", "replace")
        form.setdefault(part.get_param("name", header="content-disposition"), []).append(value)
    return {name: values[0] if len(values) == 1 else values for name, values in form.items()}


def _unfetchable_url_refused(response) -> bool:
    """The request gave an `image_url` outside the test's image server and was answered 422 unreadable_image."""
    try:
        url = json.loads(response.request.body)["image_url"]
        code = response.json()["error"]["code"]
    except (TypeError, ValueError, KeyError):
        return False
    return (response.status_code == 422 and code == "unreadable_image" and isinstance(url, str)
            and not (IMAGE_SERVER and url.startswith(IMAGE_SERVER[0] + "/")))


def _rss_mb() -> float | None:
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024


def fuzz(app, examples: int, seed: int) -> tuple[list[str], Counter]:
    """Run schemathesis over the app: (failures, as text; responses by (operation, status))."""
    config = schemathesis.Config.from_dict({
        "checks": {"enabled": True},  # every check (`--checks all`)
        "generation": {"max-examples": examples, "database": "none"},
        "seed": seed,
        "continue-on-failure": True,  # past an operation's first failure, to what lies behind it
    })
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config)
    form_schema = schema.raw_schema["paths"]["/v1/ground"]["post"]["requestBody"]["content"][
        "multipart/form-data"]["schema"]

    @schema.hook
    def filter_failure(ctx, failure, case, response) -> bool:
        """Drop two false positives of the fuzzer's. An `image_url` that is not the test's image server's
        (schemathesis's coverage phase builds some from the pattern alone, e.g. "http://0"), refused as
        `unreadable_image` because it cannot be fetched: a schema says what a URL looks like, not that it
        answers. And, only where the request as sent is valid: a negative form
        whose `text` it made a number or null goes out as the text "0" or "null", which is a description.
        (schemathesis checks the form as sent, but gives up when it has a file part: "Unsupported type:
        'Binary'"; here the file part counts as the file it is.)"""
        import jsonschema_rs

        if failure.title == "Schema-valid request rejected" and _unfetchable_url_refused(response):
            return False
        if failure.title != "Schema-violating request accepted" or not str(case.media_type).startswith("multipart/"):
            return True
        sent = _sent_form(response.request)
        return sent is None or not jsonschema_rs.validator_for(form_schema).is_valid(sent)

    failures, statuses = [], Counter()
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            recorder = event.recorder
            for interaction in recorder.interactions.values():
                if interaction.response is not None:
                    statuses[recorder.label, interaction.response.status_code] += 1
            for nodes in recorder.checks.values():
                for node in nodes:
                    if node.failure_info is not None:
                        failures.append(f"{recorder.label} {node.name}: {node.failure_info.failure.title}\n"
                                        f"{node.failure_info.failure.message}\n{node.failure_info.code_sample}")
        elif isinstance(event, (events.NonFatalError, events.FatalError)):
            failures.append(f"error: {getattr(event, 'value', getattr(event, 'exception', event))!r}")
        elif isinstance(event, events.EngineFinished):
            failures.extend(f"after the run: {f.title}: {f.message}" for f in event.failures)
    return failures, statuses


@pytest.mark.slow
@pytest.mark.parametrize("allow_urls", [False, True], ids=["base64", "allow-urls"])
def test_the_api_holds_to_its_openapi_document_under_fuzzing(small_grounder, allow_urls: bool, request) -> None:
    fetched = request.getfixturevalue("image_server") if allow_urls else None
    # A URL that does not answer (coverage-phase URLs such as "http://10.0.0.0") costs the fetch's timeout.
    app = create_app(small_grounder, ServeConfig(allow_urls=allow_urls, allow_private_urls=allow_urls,
                                                         url_timeout_s=1.0), model_name="fixture")
    access = logging.getLogger("ofa_grounding.serve.access")
    level = access.level
    access.setLevel(logging.WARNING)  # thousands of requests: not one line each
    image = base64.b64encode((ROOT / "examples" / "shapes.png").read_bytes()).decode()
    before = after = None
    try:
        with asgi.get_client(app) as client:  # in-process; starts the app's lifespan, which the fuzzer shares
            # Warm up (the model's buffers, the image codecs, the thread pools, and the fuzzer's own caches, which
            # live in this process too) with a short run, then measure the long one.
            failures, statuses = fuzz(app, 100, SEED + 1)
            cache, before, start = small_grounder.cache.bytes, _rss_mb(), time.perf_counter()
            more_failures, more_statuses = fuzz(app, EXAMPLES, SEED)
            seconds, after = time.perf_counter() - start, _rss_mb()
            cached_mb = (small_grounder.cache.bytes - cache) / 2**20  # new images' backbone outputs, kept by design
            health = client.get("/healthz")
            answered = client.post("/v1/ground", json={"image": image, "texts": ["the red circle"]})
    finally:
        access.setLevel(level)
        asgi.shutdown_lifespans()
    failures, statuses = failures + more_failures, statuses + more_statuses
    summary = ", ".join(f"{op} {status}: {n}" for (op, status), n in sorted(statuses.items()))
    memory = "" if before is None else f"; RSS {before:.0f} -> {after:.0f} MB, {cached_mb:.1f} MB of it feature cache"
    urls = "" if fetched is None else f"; {len(fetched)} image_url fetches"
    print(f"\nfuzzed in {seconds:.1f} s (seed {SEED}, {EXAMPLES} examples; before it seed {SEED + 1}, 100): "
          f"{summary}{memory}{urls}", file=sys.stderr)
    assert not failures, f"{len(failures)} failures (seeds {SEED + 1}, {SEED}):\n\n" + "\n\n".join(failures[:10])
    assert not [key for key in statuses if key[1] >= 500], summary
    assert statuses["POST /v1/ground", 200] >= EXAMPLES // 3, summary  # it got past the validation, often
    assert {status for op, status in statuses if op == "POST /v1/ground"} >= {200, 415, 422}, summary
    if fetched is not None:  # the fuzzer got URLs past the validation and the server fetched them
        assert len(fetched) >= 10, summary + f"; {len(fetched)} fetches"
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert answered.status_code == 200 and len(answered.json()["results"]) == 1
    if before is not None:
        assert after - before - cached_mb < RSS_GROWTH_MB, \
            f"RSS grew {before:.0f} -> {after:.0f} MB over the run, {cached_mb:.1f} MB of it the feature cache"
