"""Fetching a request's `image_url` (only when the server was started with --allow-urls).

http(s) only, redirects to http(s) only, at most a given number of bytes, within a timeout, and, unless private
addresses are allowed, only from public ones: every connection (the first and each redirect's) resolves its host
once, drops loopback, private, link-local, shared and reserved addresses, and connects to what is left by address,
so a name that resolves differently the second time cannot reach the server's own network either. Proxy
environment variables are ignored when addresses are checked (a proxy would connect wherever it is asked).
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import urllib.error
import urllib.parse
import urllib.request

from ..errors import first_line

__all__ = ["FetchError", "PrivateAddressError", "fetch_url", "is_public_address"]


class FetchError(Exception):
    """The URL could not be fetched; `code` is the service's error code, `status` its HTTP status."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


class PrivateAddressError(OSError):
    """The host has no public address (an OSError, so that urllib passes it on as a URLError's reason)."""


def is_public_address(address: str) -> bool:
    """Whether an IP address (IPv4 or IPv6, an IPv4-mapped IPv6 one as the IPv4 one) is globally routable
    unicast: not loopback, private, link-local (cloud metadata services), shared (100.64/10), reserved,
    unspecified or multicast."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 scope ("fe80::1%eth0") names a local link
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _connect_public(address: tuple[str, int], timeout=socket._GLOBAL_DEFAULT_TIMEOUT, source_address=None,
                    *args, **kwargs) -> socket.socket:
    """`socket.create_connection`, to the host's public addresses only (connected by address, not by name)."""
    host, port = address[0], address[1]
    found = {info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)}
    public = sorted(a for a in found if is_public_address(a))
    if not public:
        raise PrivateAddressError(f"{host} is at {', '.join(sorted(found))}, not a public address")
    error: OSError | None = None
    for ip in public:
        try:
            return socket.create_connection((ip, port), timeout, source_address)
        except OSError as exc:
            error = exc
    raise error  # type: ignore[misc]


class _PublicHTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._create_connection = _connect_public


class _PublicHTTPSConnection(http.client.HTTPSConnection):  # TLS still checks the certificate against the name
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._create_connection = _connect_public


class _PublicHTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req):
        return self.do_open(_PublicHTTPConnection, req)


class _PublicHTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req):
        return self.do_open(_PublicHTTPSConnection, req, context=self._context)


class _HTTPRedirectsOnly(urllib.request.HTTPRedirectHandler):
    """Follows redirects to http(s) URLs only (urllib's own handler also follows them to ftp://)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if not newurl.startswith(("http://", "https://")):
            raise urllib.error.HTTPError(newurl, code, "a redirect to a URL that is not http(s)", headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_PUBLIC_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _PublicHTTPHandler,
                                             _PublicHTTPSHandler, _HTTPRedirectsOnly)
_ANY_OPENER = urllib.request.build_opener(_HTTPRedirectsOnly)


def fetch_url(url: str, max_bytes: int, timeout_s: float, allow_private: bool = False) -> bytes:
    """GET an http(s) URL: its first `max_bytes` bytes, or `FetchError` (422 `bad_image_url`, 422
    `private_image_url`, 422 `unreadable_image`, 413 `image_too_large`)."""
    try:
        host = urllib.parse.urlsplit(url).hostname
    except ValueError:  # e.g. an unclosed "[" of an IPv6 address
        host = None
    if not url.startswith(("http://", "https://")) or not host:
        raise FetchError(422, "bad_image_url", "image_url must be an http:// or https:// URL with a host")
    try:
        with (_ANY_OPENER if allow_private else _PUBLIC_OPENER).open(url, timeout=timeout_s) as response:
            data = response.read(max_bytes + 1)
    except Exception as exc:  # an HTTP error, a malformed URL, a broken connection, a timeout while reading, ...
        reason = getattr(exc, "reason", None)  # urllib's URLError carries the connection's own error
        if isinstance(reason, PrivateAddressError):
            raise FetchError(422, "private_image_url", f"image_url: {reason}; this server fetches from public "
                                                       "addresses only") from None
        raise FetchError(422, "unreadable_image", f"image_url: cannot fetch ({first_line(exc)})") from None
    if len(data) > max_bytes:
        raise FetchError(413, "image_too_large", f"image_url: more than {max_bytes} bytes")
    return data
