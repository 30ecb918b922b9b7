"""--workers of `predict --jsonl` and `eval`: a pool of spawned processes on this machine, each with its own model
(--threads threads, default 1), stopped with the command whatever way it ends: Ctrl-C and a failure stop them
here, and a worker whose parent is gone (SIGKILL, the OOM killer) ends itself within a second."""

from __future__ import annotations

import argparse
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from .common import default_threads
from .loading import load_grounder

_worker: dict[str, Any] = {}


def default_workers(device: str | None, torchrun: bool) -> int:
    """--workers left out: 1 on a GPU or under torchrun (each of its processes is one worker; TORCHELASTIC_RUN_ID
    says torchrun started this one, even alone), else the idle cores (`common.default_threads`), one
    single-thread process each."""
    if torchrun or "TORCHELASTIC_RUN_ID" in os.environ or (device or "cpu").startswith("cuda"):
        return 1
    return default_threads()


def start_workers(args: argparse.Namespace, workers: int) -> ProcessPoolExecutor:
    """`workers` spawned processes, each loading the model from `args` once (`worker_model`)."""
    import multiprocessing

    settings = argparse.Namespace(**{k: v for k, v in vars(args).items() if k != "func"})
    settings.threads = args.threads or 1
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_worker_start, initargs=(settings,))


def stop_workers(pool: ProcessPoolExecutor) -> None:
    """Stop the pool now, its workers mid-task included (what they were doing is lost): terminated first, then
    the pool shut down, so that it finds them gone and frees its queues (no 'leaked semaphore' warning)."""
    processes = dict(getattr(pool, "_processes", None) or {})  # no public way to stop them before 3.14
    for process in processes.values():
        if process.is_alive():
            process.terminate()
    for process in processes.values():
        process.join(5)
    pool.shutdown(wait=True, cancel_futures=True)


def worker_model() -> tuple[Any, argparse.Namespace]:
    """In a worker: its Grounder and the command's settings; the load's failure, if it failed, raised here."""
    if "failure" in _worker:
        raise _worker["failure"]
    return _worker["grounder"], _worker["settings"]


def _worker_start(settings: argparse.Namespace) -> None:
    """A worker's start: the model loaded once; a failure kept, to be raised by its first task (an initializer
    that raises would only break the pool, without the reason). Ctrl-C is the parent's to handle; a parent that
    is gone (SIGKILL, the OOM killer) ends the worker within a second, which the pool's queues would not."""
    import signal
    import threading

    from tqdm import tqdm

    from .common import setup_logging

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # tqdm's default lock holds a named semaphore, which a worker stopped by stop_workers would leave behind
    # (a 'leaked semaphore' warning); across spawned processes it would lock nothing anyway
    tqdm.set_lock(threading.RLock())
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    setup_logging(settings.verbose)
    try:
        _worker["grounder"] = load_grounder(settings)
    except BaseException as exc:
        _worker["failure"] = exc
    _worker["settings"] = settings


def _exit_with_parent(parent: int) -> None:
    import time

    while os.getppid() == parent:
        time.sleep(1)
    os._exit(1)
