"""Load test of `ofa-ground serve` on this machine (loopback only): throughput, latency, errors, memory.

    python benchmarks/load_test.py [--clients 32] [--requests 2000 | --duration 60] [--compare-unbatched] \
        [--device cuda]

Starts the server as a subprocess on 127.0.0.1 (a free port), waits for /healthz, warms it up, then runs
N client threads that each POST one image + description(s) as JSON, back to back, until the request
budget or the time is used up. Images cycle through a folder (default: the reference fixtures' 16
images of different sizes); the server's feature cache is off unless --cache-mb is given, so every
request pays the backbone. Prints, per server configuration: requests, errors (any non-200 or
connection failure), throughput, latency p50/p95/p99, the server's RSS after warm-up, once a quarter of
the requests are done, at the end, and at its peak, and how many model calls served the requests (mean
descriptions per call).
`--compare-unbatched` repeats the run against a server with `--max-batch 1` (micro-batching off).
`--rss-every N` (a soak): also samples the server's RSS after every N completed requests and prints them,
with the spread of the samples after the first fifth (warm-up): a leak grows steadily, an allocator
plateaus.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _request(port: int, method: str, path: str, body: bytes | None = None, timeout: float = 120) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers={"content-type": "application/json"} if body else {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def start_server(args: argparse.Namespace, max_batch: int) -> tuple[subprocess.Popen, int]:
    port = _free_port()
    exe = Path(sys.executable).with_name("ofa-ground")  # else the package from PYTHONPATH (not installed)
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "ofa_grounding.cli"]
    cmd += ["serve", "--model", args.model, "--host", "127.0.0.1", "--port", str(port), "--max-batch",
            str(max_batch), "--precision", args.precision, "--cache-mb", str(args.cache_mb), "--max-queue",
            str(max(64, 2 * args.clients))]
    if args.device:
        cmd += ["--device", args.device]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while True:
        if server.poll() is not None:
            raise SystemExit(f"server exited: {server.stderr.read() if server.stderr else ''}")
        try:
            if _request(port, "GET", "/healthz", timeout=2)[0] == 200:
                return server, port
        except OSError:
            pass
        if time.time() > deadline:
            server.kill()
            raise SystemExit("server did not answer /healthz within 120 s")
        time.sleep(0.2)


def run(args: argparse.Namespace, payloads: list[bytes], max_batch: int) -> dict:
    server, port = start_server(args, max_batch)
    try:
        for body in payloads[: min(len(payloads), 4)]:  # warm-up: first calls allocate, load kernels
            assert _request(port, "POST", "/v1/ground", body)[0] == 200
        rss_start = _rss_mb(server.pid)
        open(f"/proc/{server.pid}/clear_refs", "w").write("5")  # peak RSS from here on
        before = json.loads(_request(port, "GET", "/healthz")[1])
        latencies: list[float] = []
        errors: list[str] = []
        lock = threading.Lock()
        counter = iter(range(10**9))
        samples: list[tuple[int, float]] = []  # (requests done, RSS MB) every --rss-every requests
        stop_at = time.perf_counter() + args.duration if args.duration else float("inf")

        def client() -> None:
            while True:
                n = next(counter)
                if (args.requests and n >= args.requests) or time.perf_counter() > stop_at:
                    return
                t0 = time.perf_counter()
                try:
                    status, text = _request(port, "POST", "/v1/ground", payloads[n % len(payloads)])
                    problem = None if status == 200 else f"{status}: {text[:120]!r}"
                except OSError as exc:
                    problem = f"{type(exc).__name__}: {exc}"
                with lock:
                    latencies.append(time.perf_counter() - t0)
                    if problem:
                        errors.append(problem)
                    if args.rss_every and len(latencies) % args.rss_every == 0:
                        samples.append((len(latencies), _rss_mb(server.pid)))

        # the server's RSS as requests complete: growth after the first quarter would be a leak
        profile: list[tuple[int, float]] = []
        done = threading.Event()

        def monitor() -> None:
            while not done.wait(0.5):
                profile.append((len(latencies), _rss_mb(server.pid)))

        threading.Thread(target=monitor, daemon=True).start()
        t0 = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        done.set()
        after = json.loads(_request(port, "GET", "/healthz")[1])
        quarter = [rss for n, rss in profile if n >= len(latencies) // 4]
        q = statistics.quantiles(latencies, n=100, method="inclusive")
        calls = after["batches"] - before["batches"]
        return {"max_batch": max_batch, "requests": len(latencies), "errors": len(errors),
                "first_errors": errors[:3], "seconds": wall, "throughput": len(latencies) / wall,
                "p50_ms": q[49] * 1e3, "p95_ms": q[94] * 1e3, "p99_ms": q[98] * 1e3,
                "rss_start_mb": rss_start, "rss_end_mb": _rss_mb(server.pid),
                "rss_peak_mb": _rss_mb(server.pid, "VmHWM"), "model_calls": calls,
                "rss_at_quarter_mb": quarter[0] if quarter else float("nan"),
                "rss_profile": profile[:: max(1, len(profile) // 20)], "rss_samples": samples,
                "descriptions_per_call": (after["descriptions"] - before["descriptions"]) / max(1, calls)}
    finally:
        server.terminate()
        server.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(SHARED / "reference" / "ofa-tiny-random"))
    ap.add_argument("--images", type=Path, default=SHARED / "reference" / "images")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=2000, help="total requests (0: use --duration)")
    ap.add_argument("--duration", type=float, default=0, help="seconds (instead of a request count)")
    ap.add_argument("--texts", type=int, default=1, help="descriptions per request")
    ap.add_argument("--precision", "--dtype", default="fp32", choices=("fp32", "bf16"),
                    help="the server's --precision (--dtype: its deprecated old name)")
    ap.add_argument("--cache-mb", type=float, default=0, help="server feature cache (default 0: off)")
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--device", default=None, help="the server's --device (e.g. cuda)")
    ap.add_argument("--compare-unbatched", action="store_true", help="also run with --max-batch 1")
    ap.add_argument("--unbatched-requests", type=int, default=0, help="request budget of that run (default: same)")
    ap.add_argument("--rss-every", type=int, default=0, metavar="N", help="soak: sample RSS every N requests")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not args.requests and not args.duration:
        ap.error("give --requests N or --duration S")
    images = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not images:
        ap.error(f"no images in {args.images}")
    words = ["the red circle on the left", "the largest object", "the thing in the middle", "the blue square"]
    payloads = [json.dumps({"image": base64.b64encode(p.read_bytes()).decode(),
                            "texts": [words[(i + k) % len(words)] for k in range(args.texts)]}).encode()
                for i, p in enumerate(images)]
    rows = [run(args, payloads, args.max_batch)]
    if args.compare_unbatched:
        args.requests = args.unbatched_requests or args.requests
        rows.append(run(args, payloads, 1))
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "?")
    print(f"machine: {cpu}, {os.cpu_count()} cores; model {Path(args.model).name}, {args.precision}; {args.clients} "
          f"clients, {args.texts} description(s)/request, {len(images)} images cycled, feature cache "
          f"{args.cache_mb:g} MB")
    header = ("max batch", "requests", "errors", "req/s", "p50 ms", "p95 ms", "p99 ms", "desc/call",
              "RSS start", "RSS 1/4", "RSS end", "RSS peak")
    print(" | ".join(f"{h:>9}" for h in header))
    for r in rows:
        cells = (r["max_batch"], r["requests"], r["errors"], f"{r['throughput']:.2f}", f"{r['p50_ms']:.0f}",
                 f"{r['p95_ms']:.0f}", f"{r['p99_ms']:.0f}", f"{r['descriptions_per_call']:.1f}",
                 f"{r['rss_start_mb']:.0f} MB", f"{r['rss_at_quarter_mb']:.0f} MB", f"{r['rss_end_mb']:.0f} MB",
                 f"{r['rss_peak_mb']:.0f} MB")
        print(" | ".join(f"{c!s:>9}" for c in cells))
        for e in r["first_errors"]:
            print("  error:", e)
    for r in rows:
        if r["rss_samples"]:
            print(f"RSS every {args.rss_every} requests (max batch {r['max_batch']}): "
                  + ", ".join(f"{n}: {v:.0f}" for n, v in r["rss_samples"]))
            after_warmup = [v for n, v in r["rss_samples"] if n > r["requests"] // 5]
            if after_warmup:
                lo, hi = min(after_warmup), max(after_warmup)
                print(f"after warm-up (requests > {r['requests'] // 5}): {lo:.0f}-{hi:.0f} MB, spread "
                      f"{100 * (hi - lo) / lo:.1f} % of the lowest; first {after_warmup[0]:.0f}, "
                      f"last {after_warmup[-1]:.0f} MB")
    if len(rows) == 2:
        print(f"micro-batching: {rows[0]['throughput'] / rows[1]['throughput']:.2f}x the throughput of "
              "one request per model call")
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
