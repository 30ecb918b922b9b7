"""MicroBatcher on its own, with a fake model: batching, routing, waiting, failures, the bounded queue."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from PIL import Image

from ofa_grounding.serve.batcher import MicroBatcher, Overloaded

IMAGE = Image.new("RGB", (4, 4))


def _echo(calls: list, gate: threading.Event | None = None):
    def run(items):
        calls.append([texts for _, texts in items])
        if gate is not None:
            gate.wait(10)
        return [[f"{t}!" for t in texts] for _, texts in items]
    return run


def test_requests_waiting_while_busy_run_together_up_to_max_batch() -> None:
    async def main() -> None:
        calls, gate = [], threading.Event()
        b = MicroBatcher(_echo(calls, gate), max_batch=3, max_wait_s=0, max_queue=10)
        await b.start()
        first = asyncio.create_task(b.submit(IMAGE, ["a"]))
        while not calls:
            await asyncio.sleep(0.001)
        rest = [asyncio.create_task(b.submit(IMAGE, [t])) for t in "bcde"]
        await asyncio.sleep(0.01)
        gate.set()
        results = await asyncio.gather(first, *rest)
        await b.stop()
        assert results == [["a!"], ["b!"], ["c!"], ["d!"], ["e!"]]
        assert calls == [[["a"]], [["b"], ["c"], ["d"]], [["e"]]]  # at most 3 descriptions per call
        assert b.stats.batches == 3 and b.stats.requests == 5 and b.stats.largest_batch == 3

    asyncio.run(main())


def test_an_idle_model_waits_at_most_max_wait_for_company() -> None:
    async def main() -> None:
        calls: list = []
        b = MicroBatcher(_echo(calls), max_batch=8, max_wait_s=0.2, max_queue=10)
        await b.start()
        t0 = time.perf_counter()
        one = asyncio.create_task(b.submit(IMAGE, ["a"]))
        await asyncio.sleep(0.05)
        two = asyncio.create_task(b.submit(IMAGE, ["b", "c"]))
        assert await one == ["a!"] and await two == ["b!", "c!"]
        assert calls == [[["a"], ["b", "c"]]]  # joined within the wait
        alone = await b.submit(IMAGE, ["z"])
        elapsed = time.perf_counter() - t0
        await b.stop()
        assert alone == ["z!"] and elapsed < 2  # the wait is bounded
        assert calls[-1] == [["z"]]

    asyncio.run(main())


def test_a_failing_model_call_fails_its_batch_only() -> None:
    async def main() -> None:
        def run(items):
            if any("bad" in texts for _, texts in items):
                raise RuntimeError("model broke")
            return [[t.upper() for t in texts] for _, texts in items]

        b = MicroBatcher(run, max_batch=1, max_wait_s=0, max_queue=4)
        await b.start()
        with pytest.raises(RuntimeError, match="model broke"):
            await b.submit(IMAGE, ["bad"])
        assert await b.submit(IMAGE, ["ok"]) == ["OK"]
        await b.stop()

    asyncio.run(main())


def test_a_full_queue_refuses_at_once() -> None:
    async def main() -> None:
        calls, gate = [], threading.Event()
        b = MicroBatcher(_echo(calls, gate), max_batch=1, max_wait_s=0, max_queue=2)
        await b.start()
        running = asyncio.create_task(b.submit(IMAGE, ["a"]))
        while not calls:
            await asyncio.sleep(0.001)
        waiting = [asyncio.create_task(b.submit(IMAGE, [t])) for t in "bc"]
        await asyncio.sleep(0.01)
        assert b.queued == 2
        with pytest.raises(Overloaded, match="queue is full"):
            await b.submit(IMAGE, ["d"])
        gate.set()
        assert await asyncio.gather(running, *waiting) == [["a!"], ["b!"], ["c!"]]
        assert b.stats.rejected == 1
        await b.stop()

    asyncio.run(main())


def test_bad_settings() -> None:
    with pytest.raises(ValueError):
        MicroBatcher(_echo([]), max_batch=0)
    with pytest.raises(RuntimeError, match="start"):
        asyncio.run(MicroBatcher(_echo([])).submit(IMAGE, ["a"]))
