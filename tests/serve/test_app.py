"""The HTTP service through FastAPI's test client: every endpoint and every error path (on the small in-repo
fixture, tests/fixtures/small-reference, whose cases hold the reference's answers)."""

from __future__ import annotations

import base64
import http.server
import io
import json
import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient  # the serve extra (part of dev)
from PIL import Image

from ofa_grounding.serve import ServeConfig, create_app

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "shapes.png"


@pytest.fixture(scope="module")
def client(small_grounder) -> Iterator[TestClient]:
    with TestClient(create_app(small_grounder, model_name="fixture")) as c:
        yield c


def _client(grounder, **limits) -> TestClient:
    return TestClient(create_app(grounder, ServeConfig(**limits), model_name="fixture"))


def _multipart(path: Path, *texts: str) -> dict:
    return {"files": {"image": (path.name, path.read_bytes(), "image/png")}, "data": {"text": list(texts)}}


def _error(response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code, body
    return body["error"]["message"]


def test_ground_multipart_gives_the_reference_box(client: TestClient, small_reference_dir: Path,
                                                  small_cases: list[dict]) -> None:
    case = small_cases[0]
    image = small_reference_dir / case["image"]
    response = client.post("/v1/ground", **_multipart(image, case["text"]))
    assert response.status_code == 200, response.text
    body = response.json()
    with Image.open(image) as im:
        assert (body["width"], body["height"]) == im.size
    (result,) = body["results"]
    assert result["text"] == case["text"]
    assert result["box"] == pytest.approx(case["box"], abs=1e-3)
    assert set(result) == {"text", "box", "score", "confidence", "found", "truncated", "alternatives",
                           "raw_confidence", "calibrated", "zoomed"}
    assert result["calibrated"] is False and result["raw_confidence"] == result["confidence"]
    assert 0 < result["confidence"] <= 1 and len(result["alternatives"]) == 4
    assert set(result["alternatives"][0]) == {"box", "score", "confidence"}


def test_results_are_the_api_results_to_dict(small_grounder, small_reference_dir: Path,
                                             small_cases: list[dict]) -> None:
    """One result-to-JSON for every output: the service answers `GroundingResult.to_dict` (no token ids, with
    `truncated` and the alternatives), field for field and in the same order."""
    image = small_reference_dir / small_cases[0]["image"]
    texts = [small_cases[0]["text"], "the red circle " * 200]  # the second one is truncated
    expected = [r.to_dict(alternatives=True, tokens=False, truncated=True)
                for r in small_grounder.predict(image, texts)]
    assert [e["truncated"] for e in expected] == [False, True]
    with _client(small_grounder, max_text_chars=10_000) as c:
        results = c.post("/v1/ground", **_multipart(image, *texts)).json()["results"]
    assert results == json.loads(json.dumps(expected))
    assert [list(r) for r in results] == [list(e) for e in expected]
    assert [list(a) for a in results[0]["alternatives"]] == [["box", "score", "confidence"]] * 4


@pytest.mark.slow
def test_ground_json_several_texts_in_order(client: TestClient, small_grounder, small_reference_dir: Path,
                                            small_cases: list[dict]) -> None:
    image = small_reference_dir / small_cases[0]["image"]
    texts = [c["text"] for c in small_cases if c["image"] == small_cases[0]["image"]][:3]
    texts.append("a description of my own")
    b64 = base64.b64encode(image.read_bytes()).decode()
    expected = [r.box for r in small_grounder.predict(image, texts)]
    for payload in ({"image": b64, "texts": texts}, {"image": "data:image/png;base64," + b64, "texts": texts}):
        response = client.post("/v1/ground", json=payload)
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        assert [r["text"] for r in results] == texts
        for r, box in zip(results, expected):
            assert r["box"] == pytest.approx(list(box), abs=1e-4)
    one = client.post("/v1/ground", json={"image": b64, "text": texts[0]}).json()["results"]
    assert len(one) == 1 and one[0]["box"] == pytest.approx(list(expected[0]), abs=1e-4)


def test_model_health_docs_and_page(client: TestClient, small_model_dir: Path) -> None:
    from ofa_grounding.checkpoint import read_checkpoint

    info = client.get("/v1/model").json()
    assert info["name"] == "fixture" and info["preset"] == "custom" and info["precision"] == "fp32"  # d_model 64
    assert "dtype" not in info  # renamed: "dtype" is a torch.dtype elsewhere
    stored = sum(p.numel() for p in read_checkpoint(small_model_dir).model.parameters())  # before BN folding
    assert info["device"] == "cpu" and info["parameters"] == stored and info["image_size"] == 256
    assert info["limits"]["max_texts"] == 16 and info["limits"]["allow_urls"] is False
    assert info["batching"] == {"max_batch": 16, "max_wait_ms": 5.0, "max_queue": 64}
    assert info["calibrated"] is False
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["queued"] == 0
    assert "/v1/ground" in client.get("/openapi.json").json()["paths"]
    assert client.get("/docs").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for asset in ("/static/app.js", "/static/style.css", "/static/example.png", "/static/favicon.svg"):
        assert client.get(asset).status_code == 200, asset
    # no external CDN: every referenced URL is local
    for text in (page.text, client.get("/static/app.js").text, client.get("/static/style.css").text):
        assert "http://" not in text and "https://" not in text


def test_docs_are_served_without_a_cdn(client: TestClient) -> None:
    pytest.importorskip("swagger_ui_bundle", reason="local API docs need swagger-ui-bundle (the serve extra)")
    docs = client.get("/docs").text
    assert "cdn" not in docs.lower() and "/swagger-ui/swagger-ui-bundle.js" in docs
    assert client.get("/swagger-ui/swagger-ui-bundle.js").status_code == 200


@pytest.mark.parametrize("payload, code", [
    ({"texts": ["a"]}, "missing_image"),
    ({"image": "@@not base64@@", "texts": ["a"]}, "unreadable_image"),
    ({"image": base64.b64encode(b"not an image at all").decode(), "texts": ["a"]}, "unreadable_image"),
    ({"image": "aGVsbG8=", "texts": []}, "missing_text"),
    ({"image": "aGVsbG8=", "texts": [1]}, "bad_text"),
    ({"image": "aGVsbG8=", "texts": {"a": 1}}, "bad_text"),
    ({"image": "aGVsbG8=", "texts": ["a"] * 17}, "too_many_texts"),
    ({"image": "aGVsbG8=", "texts": ["x" * 501]}, "text_too_long"),
    ({"image_url": "http://127.0.0.1:9/x.png", "texts": ["a"]}, "urls_disabled"),
    ([1, 2], "bad_json"),
])
def test_json_errors_are_422_with_a_clear_message(client: TestClient, payload, code: str) -> None:
    message = _error(client.post("/v1/ground", json=payload), 422, code)
    assert message and "\n" not in message


def test_other_request_errors(client: TestClient) -> None:
    _error(client.post("/v1/ground", content=b"{not json", headers={"content-type": "application/json"}),
           422, "bad_json")
    _error(client.post("/v1/ground", content=b"hello", headers={"content-type": "text/plain"}),
           415, "unsupported_content_type")
    _error(client.post("/v1/ground", data={"text": ["a"]}, files={"other": ("x", b"y")}), 422, "missing_image")
    _error(client.post("/v1/ground", files={"image": ("x.png", b"garbage", "image/png")}, data={"text": ["a"]}),
           422, "unreadable_image")
    _error(client.post("/v1/ground", **_multipart(EXAMPLE)), 422, "missing_text")
    assert client.get("/v1/ground").status_code == 405


def test_size_limits_are_413(small_grounder) -> None:
    with _client(small_grounder, max_request_bytes=1000, max_pixels=10_000) as c:
        _error(c.post("/v1/ground", **_multipart(EXAMPLE, "a")), 413, "request_too_large")  # by Content-Length

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted while streaming
            yield b'{"image": "'
            yield b"A" * 2000
            yield b'", "texts": ["a"]}'

        _error(c.post("/v1/ground", content=chunks(), headers={"content-type": "application/json"}),
               413, "request_too_large")
        small = io.BytesIO()
        Image.new("RGB", (200, 100), "red").save(small, format="PNG")  # 20,000 pixels, a few hundred bytes
        assert len(small.getvalue()) < 1000
        message = _error(c.post("/v1/ground", files={"image": ("s.png", small.getvalue(), "image/png")},
                                data={"text": ["a"]}), 413, "image_too_large")
        assert "200x100" in message


class _RedirectingHandler(http.server.SimpleHTTPRequestHandler):
    """Serves its folder; /to?URL answers 302 with Location URL."""

    def do_GET(self) -> None:
        if self.path.startswith("/to?"):
            self.send_response(302)
            self.send_header("Location", self.path[4:])
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, *args) -> None:
        pass


def test_image_url_only_when_enabled(small_grounder, tmp_path: Path) -> None:
    (tmp_path / "shapes.png").write_bytes(EXAMPLE.read_bytes())
    handler = lambda *a, **k: _RedirectingHandler(*a, directory=str(tmp_path), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/shapes.png"
    try:
        with _client(small_grounder, allow_urls=True) as c:  # public addresses only: 127.0.0.1 is refused
            for refused in (url, f"http://localhost:{server.server_address[1]}/shapes.png"):
                message = _error(c.post("/v1/ground", json={"image_url": refused, "texts": ["a"]}), 422,
                                 "private_image_url")
                assert "127.0.0.1" in message and "public" in message, message
        with _client(small_grounder, allow_urls=True, allow_private_urls=True) as c:
            ok = c.post("/v1/ground", json={"image_url": url, "texts": ["the red circle"]})
            assert ok.status_code == 200 and ok.json()["width"] == 640, ok.text
            _error(c.post("/v1/ground", json={"image_url": url + "-missing", "texts": ["a"]}), 422, "unreadable_image")
            _error(c.post("/v1/ground", json={"image_url": "file:///etc/passwd", "texts": ["a"]}), 422,
                   "bad_image_url")
            base = url.rsplit("/", 1)[0]
            moved = c.post("/v1/ground", json={"image_url": f"{base}/to?{url}", "texts": ["the red circle"]})
            assert moved.status_code == 200 and moved.json()["width"] == 640, moved.text
            for target in ("file:///etc/passwd", "ftp://127.0.0.1:9/shapes.png"):  # urllib alone follows ftp://
                message = _error(c.post("/v1/ground", json={"image_url": f"{base}/to?{target}", "texts": ["a"]}),
                                 422, "unreadable_image")
                assert "redirect" in message.lower(), message
    finally:
        server.shutdown()


@pytest.mark.slow
def test_concurrent_requests_share_model_calls_and_get_their_own_answers(small_grounder) -> None:
    """While the model is busy, waiting requests pile up and run as one batch; each gets its own results."""
    texts = [["the red circle"], ["the blue square", "the green triangle"], ["the small yellow circle"],
             ["the shape at the top"]]
    expected = [[r.box for r in small_grounder.predict(EXAMPLE, t)] for t in texts]
    with _client(small_grounder) as c:
        batcher = c.app.state.batcher
        release, calls = threading.Event(), []
        original = batcher.run

        def gated(items):
            calls.append([len(t) for _, t in items])
            release.wait(30)
            return original(items)

        batcher.run = gated
        with ThreadPoolExecutor(len(texts)) as pool:
            first = pool.submit(c.post, "/v1/ground", **_multipart(EXAMPLE, *texts[0]))
            while not calls:  # the first request holds the model
                threading.Event().wait(0.01)
            rest = [pool.submit(c.post, "/v1/ground", **_multipart(EXAMPLE, *t)) for t in texts[1:]]
            while batcher.queued < len(rest):
                threading.Event().wait(0.01)
            release.set()
            responses = [first.result(), *(f.result() for f in rest)]
        assert calls[0] == [1] and sorted(calls[1]) == [1, 1, 2] and len(calls) == 2  # the 3 waiting: one batch
        for response, t, boxes in zip(responses, texts, expected):
            assert response.status_code == 200
            results = response.json()["results"]
            assert [r["text"] for r in results] == t
            for r, box in zip(results, boxes):
                assert r["box"] == pytest.approx(list(box), abs=1e-4)
        health = c.get("/healthz").json()
        assert health["batches"] == 2 and health["requests"] == 4 and health["largest_batch"] == 4


def test_full_queue_answers_503_with_retry_after(small_grounder) -> None:
    with _client(small_grounder, max_queue=1) as c:
        batcher = c.app.state.batcher
        release, started = threading.Event(), threading.Event()
        original = batcher.run

        def gated(items):
            started.set()
            release.wait(30)
            return original(items)

        batcher.run = gated
        with ThreadPoolExecutor(2) as pool:
            running = pool.submit(c.post, "/v1/ground", **_multipart(EXAMPLE, "a"))
            assert started.wait(30)
            waiting = pool.submit(c.post, "/v1/ground", **_multipart(EXAMPLE, "b"))
            while batcher.queued < 1:
                threading.Event().wait(0.01)
            refused = c.post("/v1/ground", **_multipart(EXAMPLE, "c"))
            _error(refused, 503, "overloaded")
            assert refused.headers["retry-after"] == "1"
            release.set()
            assert running.result().status_code == 200 and waiting.result().status_code == 200
        assert c.get("/healthz").json()["rejected"] == 1


def test_model_failure_is_a_json_500_for_that_batch_only(small_grounder) -> None:
    with TestClient(create_app(small_grounder), raise_server_exceptions=False) as c:
        batcher = c.app.state.batcher
        original, batcher.run = batcher.run, lambda items: (_ for _ in ()).throw(RuntimeError("boom"))
        message = _error(c.post("/v1/ground", **_multipart(EXAMPLE, "a")), 500, "internal_error")
        assert message == "RuntimeError: boom"
        batcher.run = original
        assert c.post("/v1/ground", **_multipart(EXAMPLE, "a")).status_code == 200


def test_every_request_is_logged_on_one_line_without_its_content(small_grounder, capsys: pytest.CaptureFixture
                                                                 ) -> None:
    """serve logged nothing per request (issue 28): method, path, status, milliseconds, and the number of
    descriptions of a grounding call, on stderr by default; never the uploaded image or texts."""
    line = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} %s \d+\.\d ms%s"
    secret = "the secret red circle"
    with TestClient(create_app(small_grounder, ServeConfig(max_request_bytes=100_000)),
                    raise_server_exceptions=False) as c:
        capsys.readouterr()
        assert c.post("/v1/ground", **_multipart(EXAMPLE, secret, "b")).status_code == 200
        assert c.post("/v1/ground", json={"image": base64.b64encode(EXAMPLE.read_bytes()).decode(),
                                          "texts": [secret]}).status_code == 200
        assert c.get("/healthz").status_code == 200
        assert c.post("/v1/ground", json={"texts": ["a"]}).status_code == 422  # no image
        assert c.post("/v1/ground", content=b"x" * 200_000).status_code == 413  # refused before the app
        batcher = c.app.state.batcher
        original, batcher.run = batcher.run, lambda items: (_ for _ in ()).throw(RuntimeError("boom"))
        assert c.post("/v1/ground", **_multipart(EXAMPLE, "a")).status_code == 500
        batcher.run = original
        err = capsys.readouterr().err
    expected = [line % ("POST /v1/ground 200", " 2 descriptions"), line % ("POST /v1/ground 200", " 1 description"),
                line % ("GET /healthz 200", ""), line % ("POST /v1/ground 422", ""), line % ("POST /v1/ground 413", ""),
                line % ("POST /v1/ground 500", " 1 description")]
    lines = err.splitlines()
    assert len(lines) == len(expected), err
    for got, pattern in zip(lines, expected):
        assert re.fullmatch(pattern, got), (got, pattern)
    assert secret not in err and "PNG" not in err


def test_openapi_documents_both_request_formats(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    content = spec["paths"]["/v1/ground"]["post"]["requestBody"]["content"]
    assert set(content) == {"multipart/form-data", "application/json"}
    assert json.dumps(spec)  # serialisable
    example = client.post("/v1/ground", json=content["application/json"]["example"])  # Swagger UI's "Try it out"
    assert example.status_code == 200 and example.json()["width"] == 8


def test_empty_description_answers_not_found_like_the_api(client: TestClient, small_grounder,
                                                          small_reference_dir: Path, small_cases: list[dict]) -> None:
    """An empty or blank description describes nothing: API, CLI and server all answer found: false, with the
    reference's box for the bare prompt (kept for fidelity; parity cases s01 here, p037-p039 in ../shared)."""
    case = next(c for c in small_cases if not c["text"].strip())
    image = small_reference_dir / case["image"]
    api = small_grounder.predict(image, case["text"])
    assert not api.found and api.tokens == tuple(case["tokens"])
    b64 = base64.b64encode(image.read_bytes()).decode()
    for texts in ([case["text"]], ["  "]):
        response = client.post("/v1/ground", json={"image": b64, "texts": texts})
        assert response.status_code == 200, response.text
        assert response.json()["results"][0]["found"] is False
    assert client.post("/v1/ground", json={"image": b64, "texts": ["x"]}).json()["results"][0]["found"] is True


def test_multipart_problems_answer_in_the_error_shape(client: TestClient) -> None:
    image = EXAMPLE.read_bytes()
    _error(client.post("/v1/ground", files={"image": ("a.png", image, "image/png")}, data={"text": ["a"] * 50}),
           422, "too_many_texts")
    for ctype in ("multipart/form-data; boundary=xyz", "multipart/form-data"):
        _error(client.post("/v1/ground", content=b"garbage", headers={"content-type": ctype}), 422, "bad_multipart")
    two = [("image", ("a.png", image, "image/png")), ("image", ("b.png", image, "image/png"))]
    _error(client.post("/v1/ground", files=two, data={"text": ["a"]}), 422, "too_many_images")
    part = b'--b\r\nContent-Disposition: form-data; name="%s"%s\r\n\r\n%s\r\n'
    body = (part % (b"image", b'; filename="a.png"', image) + part % (b"text", b"", b"\xff\xfe red") + b"--b--\r\n")
    _error(client.post("/v1/ground", content=body, headers={"content-type": "multipart/form-data; boundary=b"}),
           422, "bad_text")
    ok = client.post("/v1/ground", files={"image": ("a.png", image, "image/png")}, data={"text": ["à gauche é"]})
    assert ok.status_code == 200 and ok.json()["results"][0]["text"] == "à gauche é"


def test_a_png_bomb_is_413_image_too_large(client: TestClient) -> None:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)  # 60000 x 60000 RGB, no pixel data needed
    bomb = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 100))
            + chunk(b"IEND", b""))
    _error(client.post("/v1/ground", files={"image": ("bomb.png", bomb, "image/png")}, data={"text": ["a"]}),
           413, "image_too_large")


def test_a_calibrated_model_answers_its_probability(tiny_model_dir: Path) -> None:
    from ofa_grounding import Grounder
    from ofa_grounding.calibration import Calibration

    constant = {"kind": "constant", "probability": 0.93, "reason": "test"}
    calibration = Calibration.from_json({"format": 1, "box": constant, "not_found": constant})
    with _client(Grounder.from_pretrained(tiny_model_dir, calibration=calibration)) as c:
        (result,) = c.post("/v1/ground", **_multipart(EXAMPLE, "the red circle")).json()["results"]
        assert c.get("/v1/model").json()["calibrated"] is True
    assert result["confidence"] == 0.93 and result["calibrated"] is True and result["raw_confidence"] < 0.93
    assert [list(a) for a in result["alternatives"]] == [["box", "score", "confidence"]] * 4  # raw


def test_the_web_page_words_the_confidence_like_the_cli() -> None:
    """app.js's confidenceText/answerText (run in node) against `GroundingResult.confidence_label`."""
    import re
    import shutil
    import subprocess

    from ofa_grounding.predictor import GroundingResult

    node = shutil.which("node")
    if node is None:
        pytest.skip("no node to run the page's script")
    script = (ROOT / "src/ofa_grounding/serve/static/app.js").read_text()
    functions = "\n".join(re.search(rf"^function {name}\(r\) {{.*?^}}", script, re.S | re.M).group(0)
                          for name in ("confidenceText", "answerText"))
    cases = [(0.93, True, True), (0.9974, True, False), (0.0031, True, True), (0.0312, False, True),
             (0.925, True, True), (0.0581, False, False)]
    js = f"{functions}\nconsole.log(JSON.stringify({json.dumps(cases)}.map(([c, cal, found]) => " \
         "answerText({confidence: c, calibrated: cal, found: found}))));"
    page = json.loads(subprocess.run([node, "-e", js], capture_output=True, text=True, check=True).stdout)
    assert page == ["93 % sure", "not found (> 99 % sure)", "< 1 % sure", "raw score 0.031 (uncalibrated)",
                    "93 % sure", "not found, raw score 0.058 (uncalibrated)"]
    for (c, cal, _), words in zip(cases, page):
        label = GroundingResult("t", (0, 0, 1, 1), -1.0, c, (0, 0, 0, 0), (1, 1), calibrated=cal).confidence_label()
        assert label in words if cal else label.replace("raw ", "raw score ") in words
    assert "unsure" not in script


def test_the_model_card_is_served_and_linked_from_the_page(tiny_model_dir: Path) -> None:
    from ofa_grounding import Grounder

    bundled = Grounder.from_pretrained()
    assert bundled.card and "## " in bundled.card  # the bundled model's README.md
    with _client(bundled) as c:
        info = c.get("/v1/model").json()
        card = c.get(info["card"])
        page = c.get("/").text
    assert info["card"] == "/v1/model/card" and card.status_code == 200
    assert card.headers["content-type"].startswith("text/plain") and card.text == bundled.card
    assert 'href="/v1/model/card"' in page and "What this model knows" in page
    without = Grounder.from_pretrained(tiny_model_dir, card=None)
    with _client(without) as c:
        assert c.get("/v1/model").json()["card"] is None
        _error(c.get("/v1/model/card"), 404, "no_model_card")


def test_unknown_and_conflicting_fields_are_refused(client: TestClient) -> None:
    """The request body is exactly what the OpenAPI document declares: no other fields, one way to give each."""
    image = EXAMPLE.read_bytes()
    b64 = base64.b64encode(image).decode()
    message = _error(client.post("/v1/ground", json={"image": b64, "texts": ["a"], "txets": ["b"]}), 422,
                     "unknown_field")
    assert "'txets'" in message
    _error(client.post("/v1/ground", files={"image": ("a.png", image, "image/png")}, data={"text": "a", "lang": "en"}),
           422, "unknown_field")
    _error(client.post("/v1/ground", json={"image": b64, "texts": ["a"], "text": "b"}), 422, "conflicting_fields")
    _error(client.post("/v1/ground", json={"image": b64, "texts": ["a"], "image_url": "http://x/a.png"}), 422,
           "urls_disabled")
    lone = b'{"image": "%s", "texts": ["a \\ud800 b"]}' % b64.encode()  # JSON can say it; no tokenizer takes it
    assert "surrogate" in _error(client.post("/v1/ground", content=lone, headers={"content-type": "application/json"}),
                                 422, "bad_text")
    ok = client.post("/v1/ground", files={"image": ("a.png", image, "image/png")}, data={"text": "a"})
    assert ok.status_code == 200


def test_unknown_paths_and_methods_answer_in_the_error_shape(client: TestClient) -> None:
    _error(client.get("/v2/nothing"), 404, "not_found")
    _error(client.get("/static/nothing.js"), 404, "not_found")
    response = client.put("/v1/ground")
    _error(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "POST"


def test_a_body_that_does_not_arrive_in_time_is_408_and_closes() -> None:
    """BodyLimit's deadline at the ASGI level: a client that goes quiet mid-body is refused (the app's handler makes
    the error a JSON 408 with `Connection: close`; tests/serve/test_slow_clients.py has the real server's)."""
    import asyncio

    from ofa_grounding.serve.app import APIError, BodyLimit

    async def route(scope, receive, send):  # reads the body as a route does
        while (await receive()).get("more_body"):
            pass

    async def run() -> APIError:
        parts = iter([{"type": "http.request", "body": b"x", "more_body": True}])

        async def receive() -> dict:
            part = next(parts, None)
            if part is None:
                await asyncio.sleep(3600)  # the client has gone quiet
            return part

        with pytest.raises(APIError) as refused:
            await BodyLimit(route, limit=1000, timeout_s=0.2)({"type": "http", "headers": []}, receive, None)
        return refused.value

    refusal = asyncio.run(run())
    assert (refusal.status, refusal.code, refusal.headers) == (408, "request_timeout", {"Connection": "close"})


def test_every_error_code_is_in_the_code_the_openapi_document_and_the_docs(client: TestClient) -> None:
    """`app.ERRORS` is the one list: every `APIError` in app.py names one of its codes with its status, the OpenAPI
    document lists each operation's codes under their statuses, and docs/serving.md's table lists them all."""
    from ofa_grounding.serve.app import ERRORS

    source = (ROOT / "src/ofa_grounding/serve/app.py").read_text()
    raised = set(re.findall(r'APIError\((\d{3}), "(\w+)"', source))
    assert raised and {(int(s), c) for s, c in raised} <= {(s, c) for c, (s, _) in ERRORS.items()}
    spec = client.get("/openapi.json").json()
    documented = set()
    for operations in spec["paths"].values():
        for operation in operations.values():
            for status, response in operation["responses"].items():
                schema = response.get("content", {}).get("application/json", {}).get("schema", {})
                name = schema.get("$ref", "").rpartition("/")[2]
                if name.startswith("Error"):
                    detail = spec["components"]["schemas"][name]["properties"]["error"]["$ref"].rpartition("/")[2]
                    codes = spec["components"]["schemas"][detail]["properties"]["code"]["enum"]
                    documented |= {(int(status), c) for c in codes}
    per_path = {"not_found", "method_not_allowed"}  # answers for no operation: a path or method there is not
    assert documented == {(s, c) for c, (s, _) in ERRORS.items() if c not in per_path}
    docs = (ROOT / "docs" / "serving.md").read_text(encoding="utf-8")
    table = {(int(s), c) for s, c in re.findall(r"^\| (\d{3}) \| `(\w+)` \|", docs, re.M)}
    assert table == {(s, c) for c, (s, _) in ERRORS.items()}
