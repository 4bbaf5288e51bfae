"""Where shard work runs. The local executor (worker processes) is the default; another
engine (Ray, Slurm) only has to implement `Executor.map`.

Workers call `report(docs, nbytes)` as they go; the executor forwards those counts to the
progress bar of the main process.
"""

from __future__ import annotations

import ctypes
import gc
import multiprocessing as mp
import os
import queue
import signal
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

ProgressFn = Callable[[int, int], None]

_report_queue: Any = None
_report_local: ProgressFn | None = None
_pending = [0, 0, 0.0]  # docs, bytes, time of last flush (per worker process)
_pending_lock = threading.Lock()


def report(docs: int, nbytes: int, flush: bool = False) -> None:
    """Count progress from inside a task; cheap, batched to a few messages a second."""
    with _pending_lock:
        _pending[0] += docs
        _pending[1] += nbytes
        now = time.monotonic()
        if not flush and now - _pending[2] < 0.2:
            return
        docs, nbytes = _pending[0], _pending[1]
        _pending[0] = _pending[1] = 0
        _pending[2] = now
        if _report_queue is not None:
            _report_queue.put((docs, nbytes))
        elif _report_local is not None:
            _report_local(docs, nbytes)


class Executor(ABC):
    """Runs `fn(task)` for every task and returns the results in task order."""

    workers: int

    @abstractmethod
    def map(
        self, fn: Callable[[Any], Any], tasks: Sequence[Any], progress: ProgressFn
    ) -> list[Any]:
        """Apply fn to each task; call progress(docs, bytes) as workers report."""


class LocalExecutor(Executor):
    """Worker processes on this machine (fork on Linux); in-process when workers == 1."""

    def __init__(self, workers: int | None = None):
        self.workers = max(1, workers or os.cpu_count() or 1)

    def map(
        self, fn: Callable[[Any], Any], tasks: Sequence[Any], progress: ProgressFn
    ) -> list[Any]:
        global _report_local
        if self.workers == 1 or len(tasks) <= 1:
            _report_local = progress
            try:
                return [_run_task(fn, task) for task in tasks]
            finally:
                _report_local = None
        return self._map_pool(fn, tasks, progress)

    def _map_pool(
        self, fn: Callable[[Any], Any], tasks: Sequence[Any], progress: ProgressFn
    ) -> list[Any]:
        method = "fork" if sys.platform.startswith("linux") else "spawn"
        ctx = mp.get_context(method)
        reports = ctx.Queue()
        # Forked workers share the parent's memory until they write to it, and the cyclic
        # GC writes to every object it walks: freezing the parent's objects first keeps
        # them shared instead of copied into each worker.
        gc.freeze()
        try:
            with ctx.Pool(min(self.workers, len(tasks)), _init_worker, (reports,)) as pool:
                pending = [pool.apply_async(_run_task, (fn, task)) for task in tasks]
                while not all(r.ready() for r in pending):
                    _drain(reports, progress, timeout=0.1)
                    for r in pending:
                        if r.ready() and not r.successful():
                            r.get()  # re-raise the worker's exception here
                _drain(reports, progress, timeout=0.05)
                return [r.get() for r in pending]
        finally:
            gc.unfreeze()


def _drain(reports: Any, progress: ProgressFn, timeout: float) -> None:
    try:
        while True:
            progress(*reports.get(timeout=timeout))
            timeout = 0.0
    except queue.Empty:
        return


def _init_worker(reports: Any) -> None:
    global _report_queue
    _report_queue = reports
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    _die_with_parent()


def _run_task(fn: Callable[[Any], Any], task: Any) -> Any:
    try:
        return fn(task)
    finally:
        report(0, 0, flush=True)


def _die_with_parent() -> None:
    """On Linux, ask the kernel to kill this worker when the parent dies (even by kill -9),
    so a killed run leaves no orphans writing into the output directory."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except OSError:
        return
