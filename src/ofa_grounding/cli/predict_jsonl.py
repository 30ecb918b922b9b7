"""`ofa-ground predict --jsonl IN [--out OUT]`: a collection of (image, description) lines, answered in chunks
(`ofa_grounding.collection`) by one process, by --workers processes, or by the processes of torchrun.

Whoever runs the model, one process writes: this one (its own answers, or its workers' in chunk order), or
rank 0 under torchrun (every rank's, gathered round by round). So the output is written in input order as it
goes, resumes the same way whatever the number of processes, before and after, and is the same bytes.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..collection import (
    Answer,
    ChunkAnswers,
    ChunkRule,
    Item,
    Output,
    OutputBusy,
    OutputMismatch,
    Start,
    answer_chunk,
    chunked,
    count_items,
    load_chunk_images,
    read_items,
    resume_point,
)
from .common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, UsageError, note, warn
from .loading import load_grounder
from .workers import default_workers, start_workers, stop_workers, worker_model

CHUNKS_PER_ROUND = 4  # under torchrun: chunks each rank answers between two gathers on rank 0
IN_FLIGHT_PER_WORKER = 2  # --workers: chunks handed out per worker process ahead of the one being written


def run_jsonl(args: argparse.Namespace) -> int:
    from ..distributed import DistributedContext, distributed_context

    src, out = args.jsonl, args.out
    if args.batch_size < 1:  # before the chunks are cut by it
        raise UsageError("--batch-size must be at least 1")
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    torchrun = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if torchrun and (args.workers or 1) > 1:
        raise UsageError("--workers is for one machine without torchrun; under torchrun each process is one worker")
    if out is not None and out.exists() and src.exists() and out.resolve() == src.resolve():
        raise UsageError(f"--out {out}: that is the --jsonl file itself")
    try:
        total = count_items(src)
    except OSError as exc:
        raise UsageError(f"--jsonl {src}: cannot read ({exc.strerror or exc})") from None
    if total == 0 and out is None:  # an empty batch is not an error (a pipeline's empty day), but say so
        warn(f"--jsonl {src}: no inputs, nothing to do")
        return EXIT_OK
    ctx = distributed_context(args.device) if torchrun else DistributedContext()
    if ctx.world_size > 1 and args.device and args.device.startswith("cuda"):
        args.device = f"cuda:{ctx.local_rank}"
    rule = ChunkRule.for_batch_size(args.batch_size)
    output = None
    try:
        start, problem = Start(), None
        if ctx.is_main and out is not None:
            try:
                output, start = _open_output(args, rule)
            except UsageError as exc:
                problem = str(exc)
        start, problem = ctx.broadcast((start, problem))
        if problem is not None:
            if ctx.is_main:
                raise UsageError(problem)
            return EXIT_USAGE
        if start.complete:
            if ctx.is_main:
                note(f"--out {out} already answers all {start.answered} inputs of {src}: nothing to do"
                     if total else f"--jsonl {src}: no inputs, nothing to do")
            return EXIT_FAILED if start.failed else EXIT_OK
        if start.answered and ctx.is_main:
            note(f"--out {out}: resuming after the {start.answered} of {total} inputs it answers already "
                 f"(at line {start.line} of {src})")
        sink = _Sink(output, total, start, not args.no_progress) if ctx.is_main else None
        try:
            workers = _workers(args, total - start.answered, rule, torchrun)
            logging.getLogger("ofa_grounding.cli").info("--jsonl: %d inputs, %d answered already; %d process(es) "
                                                        "of %d answering", total, start.answered,
                                                        workers if workers > 1 else 1, ctx.world_size)
            if workers > 1:
                _run_workers(args, workers, start, rule, sink)  # type: ignore[arg-type]  # one process: main
            else:
                _run_here(args, ctx, start, rule, sink)
        finally:
            if sink is not None:
                sink.close()
        return EXIT_FAILED if sink is not None and sink.failed else EXIT_OK
    finally:
        if output is not None:
            output.close()
        ctx.close()


def _open_output(args: argparse.Namespace, rule: ChunkRule) -> tuple[Output, Start]:
    """--out, locked and cut back to where this run starts (`collection.resume_point`; --overwrite: empty)."""
    out = args.out
    try:
        output = Output(out)
    except OutputBusy as exc:
        raise UsageError(f"--out {exc}") from None
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot write ({exc.strerror or exc})") from None
    try:
        start = Start() if args.overwrite else resume_point(args.jsonl, out, rule, where=str(args.jsonl))
        output.start(start.out_offset)
    except OutputMismatch as exc:
        output.close()
        raise UsageError(f"--out {out}: {exc}; pass --overwrite to start it again, or choose another --out") from None
    except OSError as exc:
        output.close()
        raise UsageError(f"--out {out}: cannot read or cut it ({exc.strerror or exc})") from None
    except BaseException:
        output.close()
        raise
    return output, start


def _workers(args: argparse.Namespace, remaining: int, rule: ChunkRule, torchrun: bool) -> int:
    """--workers, or by default: 1 on a GPU or under torchrun, else the idle cores; never more than the chunks."""
    wanted = args.workers if args.workers is not None else default_workers(args.device, torchrun)
    return max(1, min(wanted, math.ceil(remaining / rule.lines)))


class _Sink:
    """Where the answers go, in input order: --out (one fsync per chunk) or stdout; errors to stderr, one line
    each; the progress bar (total: the input's non-blank lines, from the ones answered before)."""

    def __init__(self, output: Output | None, total: int, start: Start, progress: bool) -> None:
        from tqdm import tqdm

        self.output = output
        self.failed = start.failed
        self.bar = tqdm(total=total, initial=start.answered, desc="predict", unit="line", disable=not progress,
                        dynamic_ncols=True, file=sys.stderr)

    def write(self, answer: Answer) -> None:
        if self.output is not None:
            self.output.write(answer.data)
        else:
            sys.stdout.write(answer.data.decode("utf-8"))
            sys.stdout.flush()
        for message in answer.errors:
            self.bar.write(f"ofa-ground: error: {message}", file=sys.stderr)
        self.failed += len(answer.errors)
        self.bar.update(answer.lines)

    def close(self) -> None:
        self.bar.close()


def _chunks(args: argparse.Namespace, start: Start, rule: ChunkRule) -> Iterator[list[Item]]:
    return chunked(read_items(args.jsonl, start.offset, start.line, where=str(args.jsonl)), rule)


# -- this process, or each torchrun process -----------------------------------------------------------------


def _run_here(args: argparse.Namespace, ctx: Any, start: Start, rule: ChunkRule, sink: _Sink | None) -> None:
    """Answer this process's chunks (under torchrun: every world_size-th), the next chunk's images read in a
    thread while the model answers the current one. Rank 0 writes: under torchrun each rank answers
    CHUNKS_PER_ROUND chunks, then rank 0 gathers and writes the round's answers in chunk order."""
    grounder = load_grounder(args)
    folder, where = args.jsonl.parent, str(args.jsonl)
    world, rank = ctx.world_size, ctx.rank
    per_rank = 1 if world == 1 else CHUNKS_PER_ROUND
    seen = [start.chunk]  # chunks read so far (every rank reads them all)

    def numbered() -> Iterator[tuple[int, list[Item]]]:
        for j, chunk in enumerate(_chunks(args, start, rule), start.chunk):
            seen[0] = j + 1
            yield j, chunk

    def flush(answers: ChunkAnswers) -> None:
        merged = ctx.gather(answers)
        if merged is not None and sink is not None:
            for _, answer in merged:
                sink.write(answer)

    mine = ((j, chunk) for j, chunk in numbered() if j % world == rank)
    answers, rounds = ChunkAnswers(), 0
    for j, chunk, images in _prefetched(mine, lambda chunk: load_chunk_images(grounder, chunk, folder)):
        answers.append((j, answer_chunk(grounder, chunk, images, where, args.alternatives)))
        if len(answers) == per_rank:
            flush(answers)
            answers, rounds = ChunkAnswers(), rounds + 1
    # the last round, short: every rank takes part in its gather, with or without chunks of its own
    while rounds < math.ceil((seen[0] - start.chunk) / (world * per_rank)):
        flush(answers)
        answers, rounds = ChunkAnswers(), rounds + 1


def _prefetched(chunks: Iterator[tuple[int, list[Item]]], load: Callable[[list[Item]], dict]
                ) -> Iterator[tuple[int, list[Item], dict]]:
    """(index, chunk, its images) for each chunk, the next chunk's images read in a thread meanwhile (Pillow's
    decoders and torch's kernels release the GIL): at most two chunks' images in memory."""
    with ThreadPoolExecutor(1, thread_name_prefix="ofa-ground-images") as pool:
        ahead = None
        for j, chunk in chunks:
            future = pool.submit(load, chunk)
            if ahead is not None:
                yield ahead[0], ahead[1], ahead[2].result()
            ahead = (j, chunk, future)
        if ahead is not None:
            yield ahead[0], ahead[1], ahead[2].result()


# -- --workers: processes on this machine (`workers`) -------------------------------------------------------


def _run_workers(args: argparse.Namespace, workers: int, start: Start, rule: ChunkRule, sink: _Sink) -> None:
    """Chunks handed to `workers` processes (spawned; each loads the model, with --threads threads, default 1)
    as they free up, their answers written here in chunk order. This process runs no model."""
    pool = start_workers(args, workers)
    pending: deque = deque()
    try:
        for chunk in _chunks(args, start, rule):
            pending.append(pool.submit(_worker_answer, chunk))
            if len(pending) >= IN_FLIGHT_PER_WORKER * workers:
                sink.write(pending.popleft().result())
        while pending:
            sink.write(pending.popleft().result())
    except BaseException:
        stop_workers(pool)  # the chunks they are answering: lost, answered again on a rerun
        raise
    pool.shutdown()


def _worker_answer(chunk: list[Item]) -> Answer:
    grounder, settings = worker_model()
    images = load_chunk_images(grounder, chunk, settings.jsonl.parent)
    return answer_chunk(grounder, chunk, images, str(settings.jsonl), settings.alternatives)
