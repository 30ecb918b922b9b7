"""`ofa-ground serve`: the HTTP service and web page on uvicorn (needs the serve extra)."""

from __future__ import annotations

import argparse
import functools
import inspect
import os
import socket
import sys
from typing import Any

from ..serve.config import ServeConfig, ServerSettings  # stdlib-only: keeps --help working without the serve extra
from .common import (
    EXIT_OK,
    UsageError,
    default_threads,
    min_confidence_argument,
    model_argument,
    precision_arguments,
    require_extra,
    threads_argument,
    warn,
)
from .loading import load_grounder


def add_parser(sub: Any) -> None:
    v = sub.add_parser("serve", help="HTTP service and web page (needs the serve extra)",
                       description="FastAPI service on uvicorn: POST /v1/ground, GET /v1/model, GET /healthz, "
                                   "the web page at /, API docs at /docs. Binds 127.0.0.1 unless --host says "
                                   "otherwise. Needs: pip install 'ofa-grounding[serve]'.")
    model_argument(v)
    v.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    v.add_argument("--port", type=int, default=8000, help="TCP port")
    v.add_argument("--workers", type=int, default=1,
                   help="server processes, each with its own model copy and --threads torch threads (default 1)")
    v.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: cpu)")
    v.add_argument("--batch-size", type=int, default=8,
                   help="descriptions encoded and decoded together within one model call of --max-batch (default 8)")
    min_confidence_argument(v)
    precision_arguments(v)
    threads_argument(v, "each server process's", shared_by=", divided among the --workers")
    defaults = ServeConfig()
    v.add_argument("--max-batch", type=int, default=defaults.max_batch,
                   help=f"descriptions per model call across concurrent requests (default {defaults.max_batch}; "
                        "1 turns micro-batching off)")
    v.add_argument("--max-wait-ms", type=float, default=defaults.max_wait_ms,
                   help=f"how long an idle model waits to fill a batch (default {defaults.max_wait_ms})")
    v.add_argument("--max-queue", type=int, default=defaults.max_queue,
                   help=f"requests allowed to wait; beyond it 503 + Retry-After (default {defaults.max_queue})")
    v.add_argument("--max-request-mb", type=float, default=defaults.max_request_bytes / 2**20,
                   help=f"largest request body in MB (default {defaults.max_request_bytes / 2**20:g})")
    v.add_argument("--max-pixels", type=int, default=defaults.max_pixels,
                   help=f"largest image in pixels (default {defaults.max_pixels})")
    v.add_argument("--max-texts", type=int, default=defaults.max_texts,
                   help=f"descriptions per request (default {defaults.max_texts})")
    v.add_argument("--max-text-chars", type=int, default=defaults.max_text_chars,
                   help=f"characters per description (default {defaults.max_text_chars})")
    v.add_argument("--body-timeout-s", type=float, default=defaults.body_timeout_s,
                   help=f"seconds a request's whole body may take to arrive, else 408 and the connection closed "
                        f"(default {defaults.body_timeout_s:g}): a client trickling bytes cannot hold a connection "
                        "and its partial upload for long")
    v.add_argument("--allow-urls", action="store_true",
                   help='let JSON requests give "image_url" for the server to fetch (off by default), from '
                        'public addresses only')
    v.add_argument("--allow-private-urls", action="store_true",
                   help="with --allow-urls, also fetch from loopback, private and link-local addresses (the "
                        "server's own network; off by default)")
    v.add_argument("-v", "--verbose", action="store_true", help="log every request and progress to stderr")
    v.set_defaults(func=run)


def cap_malloc_arenas(arenas: int = 2) -> bool:
    """glibc gives threads that allocate their own heap arenas, and each keeps what was freed in it: with the
    server's threads (the thread pool that decodes images, the model thread) RSS crept up 508 -> 540 MB over
    4,000 requests of a soak and had not levelled off; with 2 arenas it stayed at 417-422 MB (docs/
    serving-load-test.md). Like MALLOC_ARENA_MAX=2, which wins when set. Linux/glibc only."""
    if sys.platform != "linux" or "MALLOC_ARENA_MAX" in os.environ:
        return False
    import ctypes

    try:
        return ctypes.CDLL("libc.so.6").mallopt(-8, arenas) == 1  # M_ARENA_MAX
    except (OSError, AttributeError):
        return False


def run(args: argparse.Namespace) -> int:
    require_extra("serve", "serve", "fastapi", "uvicorn", "multipart")
    cap_malloc_arenas()  # before the server's threads start
    import uvicorn

    from ..serve import app_from_settings, create_app

    for name in ("workers", "max_batch", "max_queue", "max_texts", "max_text_chars", "max_pixels"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    if args.max_request_mb <= 0 or args.max_wait_ms < 0 or args.body_timeout_s <= 0:
        raise UsageError("--max-request-mb and --body-timeout-s must be positive and --max-wait-ms not negative")
    if args.allow_private_urls and not args.allow_urls:
        raise UsageError("--allow-private-urls needs --allow-urls")
    check_listen(args.host, args.port)  # before the model loads: a port in use is told at once
    config = ServeConfig(max_request_bytes=int(args.max_request_mb * 2**20), max_pixels=args.max_pixels,
                         max_texts=args.max_texts, max_text_chars=args.max_text_chars, max_batch=args.max_batch,
                         max_wait_ms=args.max_wait_ms, max_queue=args.max_queue, allow_urls=args.allow_urls,
                         allow_private_urls=args.allow_private_urls, body_timeout_s=args.body_timeout_s)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        warn(f"binding {args.host}: the service is reachable from other machines")
    log_level = "info" if args.verbose else "warning"
    print(f"ofa-ground serve: http://{'127.0.0.1' if args.host == '0.0.0.0' else args.host}:{args.port}/ "
          f"(API docs at /docs; Ctrl-C stops)", file=sys.stderr)
    if args.workers == 1:
        grounder = load_grounder(args)  # sets torch's threads (--threads)
        app = create_app(grounder, config, model_name=str(args.model or "bundled demo"))
        uvicorn.run(app, host=args.host, port=args.port, log_level=log_level)
        return EXIT_OK
    threads = args.threads
    if threads is None and not os.environ.get("OMP_NUM_THREADS"):  # the idle cores, shared among the workers
        threads = max(1, default_threads() // args.workers)
    load_grounder(args)  # fail here, once, with a clear message, not in every worker
    settings = ServerSettings(model=args.model, device=args.device, precision=args.precision, cache_mb=args.cache_mb,
                              cache_dir=args.cache_dir, batch_size=args.batch_size,
                              min_confidence=args.min_confidence, threads=threads, zoom=not args.no_zoom,
                              service=config)
    run_workers(uvicorn.Config(functools.partial(app_from_settings, settings), factory=True, host=args.host,
                               port=args.port, workers=args.workers, log_level=log_level))
    return EXIT_OK


def check_listen(host: str, port: int) -> None:
    """UsageError unless a server could listen on (host, port) now: the port in range, the host an address of
    this machine, the port free (bound and released at once, with SO_REUSEADDR as uvicorn binds)."""
    if not 0 <= port <= 65535:
        raise UsageError(f"--port must be 0-65535, got {port}")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise UsageError(f"--host {host}: not an address of this machine ({exc.strerror})") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise UsageError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); "
                             "give another --port or --host") from None


def run_workers(config: Any) -> None:
    """Serve `config.app` (a picklable app factory) from `config.workers` processes under uvicorn's own
    supervisor, as `uvicorn.run` does for an import string. `uvicorn.run` takes nothing but an import string
    for workers > 1, and an import string cannot carry the settings: they would have to travel in an
    environment variable. Here the factory, with its `ServerSettings`, is pickled to each process instead."""
    from uvicorn.supervisors import Multiprocess

    sockets = [config.bind_socket()]
    if "target" in inspect.signature(Multiprocess).parameters:  # older uvicorn (dropped around 0.51): the
        from uvicorn import Server  # supervisor wants the server's run method

        Multiprocess(config, target=Server(config).run, sockets=sockets).run()
    else:
        Multiprocess(config, sockets=sockets).run()
