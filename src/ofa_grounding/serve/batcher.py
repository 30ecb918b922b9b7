"""Dynamic micro-batching: concurrent requests share model calls, run off the event loop.

Requests wait in a bounded queue. One model thread takes the oldest request, everything else already
queued (up to `max_batch` descriptions), and, if the batch is still short, waits at most `max_wait_s`
for more; then it runs one `Grounder.predict_batch` over all of them. Under load the wait is never
needed (requests pile up while the model is busy), so batching costs at most `max_wait_s` of latency at
low load. A full queue refuses new requests at once (`Overloaded`: the server answers 503) instead of
letting latency grow without bound.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

__all__ = ["MicroBatcher", "Overloaded"]

RunBatch = Callable[[Sequence[tuple[Image.Image, list[str]]]], Sequence[Any]]


class Overloaded(Exception):
    """The request queue is full."""


@dataclass
class _Job:
    image: Image.Image
    texts: list[str]
    future: asyncio.Future


@dataclass
class BatchStats:
    requests: int = 0
    descriptions: int = 0
    batches: int = 0
    rejected: int = 0
    largest_batch: int = 0  # descriptions
    busy_seconds: float = 0.0
    sizes: dict[int, int] = field(default_factory=dict)  # descriptions per batch -> count


class MicroBatcher:
    def __init__(self, run: RunBatch, max_batch: int = 16, max_wait_s: float = 0.005, max_queue: int = 64) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait_s < 0:
            raise ValueError("max_batch and max_queue must be >= 1 and max_wait_s >= 0")
        self.run, self.max_batch, self.max_wait_s, self.max_queue = run, max_batch, max_wait_s, max_queue
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def queued(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    async def start(self) -> None:
        self._queue = asyncio.Queue(self.max_queue)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="ofa-model")  # one model call at a time
        self._task = asyncio.create_task(self._serve())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        while self._queue is not None and not self._queue.empty():
            job = self._queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(Overloaded("server is shutting down"))

    async def submit(self, image: Image.Image, texts: list[str]) -> list[Any]:
        """Queue one image with its descriptions; returns their results in order."""
        if self._queue is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        job = _Job(image, texts, asyncio.get_running_loop().create_future())
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            self.stats.rejected += 1
            raise Overloaded(f"request queue is full ({self.max_queue} waiting)") from None
        return await job.future

    async def _serve(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self._queue.get()]
            count = len(jobs[0].texts)
            deadline = loop.time() + self.max_wait_s
            while count < self.max_batch:
                if not self._queue.empty():
                    job = self._queue.get_nowait()
                else:
                    try:
                        job = await asyncio.wait_for(self._queue.get(), max(0.0, deadline - loop.time()))
                    except asyncio.TimeoutError:  # not TimeoutError: they differ on Python 3.10
                        break
                jobs.append(job)
                count += len(job.texts)
            jobs = [j for j in jobs if not j.future.done()]  # clients that went away
            if not jobs:
                continue
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self.run, [(j.image, j.texts) for j in jobs])
            except Exception as exc:  # the model failed: every request of the batch gets the error
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(exc)
            else:
                for j, result in zip(jobs, results):
                    if not j.future.done():
                        j.future.set_result(result)
            n = sum(len(j.texts) for j in jobs)
            s = self.stats
            s.requests, s.descriptions, s.batches = s.requests + len(jobs), s.descriptions + n, s.batches + 1
            s.largest_batch = max(s.largest_batch, n)
            s.busy_seconds += time.perf_counter() - started
            s.sizes[n] = s.sizes.get(n, 0) + 1
