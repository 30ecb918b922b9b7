"""serve/fetch.py: image_url fetching reaches public addresses only unless told otherwise (no network: the test
servers are on loopback addresses, and a test makes one of them count as public)."""

from __future__ import annotations

import http.server
import threading
from typing import ClassVar

import pytest

from ofa_grounding.serve import fetch
from ofa_grounding.serve.fetch import FetchError, fetch_url, is_public_address


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses(address: str) -> None:
    assert is_public_address(address)


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.1.2.3", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
    "198.18.0.1", "224.0.0.1", "255.255.255.255", "::1", "::", "fe80::1%eth0", "fc00::1", "::ffff:127.0.0.1",
    "::ffff:10.0.0.1", "ff02::1"])
def test_private_reserved_and_multicast_addresses(address: str) -> None:
    assert not is_public_address(address)


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a few bytes at any path; /to?URL answers 302 with Location URL; records the paths asked for."""

    asked: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.asked.append(self.path)
        if self.path.startswith("/to?"):
            self.send_response(302)
            self.send_header("Location", self.path[4:])
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", "5")
        self.end_headers()
        self.wfile.write(b"bytes")

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server(request):
    """An HTTP server on the loopback address the test's parameter names; yields (base URL, paths asked for)."""
    address = getattr(request, "param", "127.0.0.1")
    handler = type("Handler", (_Handler,), {"asked": []})
    try:
        httpd = http.server.ThreadingHTTPServer((address, 0), handler)
    except OSError as exc:
        pytest.skip(f"cannot listen on {address}: {exc}")
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://{address}:{httpd.server_address[1]}", handler.asked
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_loopback_is_refused_before_any_request_unless_allowed(server) -> None:
    base, asked = server
    port = base.rsplit(":", 1)[1]
    for url in (f"{base}/a.png", f"http://localhost:{port}/a.png"):
        with pytest.raises(FetchError) as refused:
            fetch_url(url, 100, 5.0)
        assert refused.value.code == "private_image_url" and refused.value.status == 422
        assert "127.0.0.1" in str(refused.value) and "public" in str(refused.value)
    assert asked == []  # refused before connecting: the server never saw a request
    assert fetch_url(f"{base}/a.png", 100, 5.0, allow_private=True) == b"bytes"
    assert asked == ["/a.png"]


@pytest.mark.parametrize("server", ["127.0.0.2"], indirect=True)
def test_a_redirect_to_a_private_address_is_refused(server, monkeypatch) -> None:
    """127.0.0.2 plays a public host (Linux answers on all of 127/8) whose redirect points at 127.0.0.1."""
    base, asked = server
    monkeypatch.setattr(fetch, "is_public_address", lambda address: address == "127.0.0.2")
    assert fetch_url(f"{base}/direct.png", 100, 5.0) == b"bytes"
    with pytest.raises(FetchError) as refused:
        fetch_url(f"{base}/to?http://127.0.0.1:9/secret", 100, 5.0)
    assert refused.value.code == "private_image_url", refused.value
    assert asked == ["/direct.png", "/to?http://127.0.0.1:9/secret"]


def test_bad_urls_oversized_bodies_and_failures(server) -> None:
    base, _ = server
    for url in ("file:///etc/passwd", "ftp://example.com/a.png", "http://", "https:///path", "http://[::1",
                "http://:80/a.png"):
        with pytest.raises(FetchError) as bad:
            fetch_url(url, 100, 5.0, allow_private=True)
        assert bad.value.code == "bad_image_url", url
    with pytest.raises(FetchError) as large:
        fetch_url(f"{base}/a.png", 4, 5.0, allow_private=True)
    assert (large.value.status, large.value.code) == (413, "image_too_large")
    for url in (f"{base}/to?file:///etc/passwd", f"{base}:99999/a.png"):
        with pytest.raises(FetchError) as failed:
            fetch_url(url, 100, 5.0, allow_private=True)
        assert failed.value.code == "unreadable_image", url

