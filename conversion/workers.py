"""The converter's worker processes, supervised: a worker that fails ends the
conversion within seconds, with one line naming the file it was on.

Why this exists: ``multiprocessing.Pool.imap`` waits forever for the task of a
worker that died (SIGKILL, the out-of-memory killer, SIGBUS on a truncated
memory map), and FFCV's ``DatasetWriter`` polls a counter of finished samples
in a ``while ... sleep(0.1)`` loop that no dead worker ever completes. A Ctrl-C
sent to the process group also reached every worker, each printing its own
traceback. So:

- ``ordered_map`` runs the records pass on ``concurrent.futures.ProcessPoolExecutor``
  (it raises BrokenProcessPool when a worker dies) and yields results in order;
- ``InFlight`` is a table in memory shared with the forked workers (which sample
  each one is on), so that a death names the file, and ``describe_death`` says
  how the worker ended (its exit status: SIGKILL, SIGBUS, ...);
- a worker that catches its own failure (an exception) writes one line into the
  stage folder (``report_failure``) and leaves with ``os._exit``: no traceback
  from a child, ever; the parent reads it back (``failures``);
- workers ignore SIGINT (``worker_init``): the parent alone handles Ctrl-C, stops
  them and prints its one line. While workers are forked, the parent holds a
  SIGINT back (``sigint_deferred``) so that none is forked with Python's default
  handler and then interrupted before it could ignore the signal.
"""

from __future__ import annotations

import mmap
import multiprocessing as mp
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from conversion.sources import SourceError
from pipelines.cli import shown

FAILED_PREFIX = ".failed-"  # in the stage folder: one line from a worker that failed


class WorkerFailed(SourceError):
    """A worker could not finish; the message is one line naming the file."""


def name(key: str) -> str:
    """A file's name for a one-line message: quoted when it holds control characters."""
    return key if key.isprintable() else shown(key)


class InFlight:
    """Which sample each worker is on: rows (pid, sample) in an anonymous shared
    mapping made before the workers are forked (MAP_SHARED: their writes are
    seen by the parent). Sample -1: between samples."""

    def __init__(self, slots: int):
        self._map = mmap.mmap(-1, max(1, slots) * 16)
        self.table = np.frombuffer(self._map, dtype=np.int64).reshape(-1, 2)
        self.table[:] = -1
        self._next = mp.get_context("fork").Value("i", 0)
        self.slot: int | None = None  # in a worker: its row

    def claim(self, slot: int | None = None) -> None:
        """In a worker: take a row (the next free one unless ``slot`` is given)."""
        if slot is None:
            with self._next.get_lock():
                slot = self._next.value % len(self.table)
                self._next.value += 1
        self.slot = slot
        self.table[slot] = (os.getpid(), -1)

    def set(self, sample: int) -> None:
        if self.slot is not None:
            self.table[self.slot, 1] = sample

    def samples(self, pids: Iterable[int] | None = None) -> list[int]:
        """Samples in flight, of the workers ``pids`` (all when None)."""
        rows = self.table.copy()
        keep = rows[:, 1] >= 0
        if pids is not None:
            keep &= np.isin(rows[:, 0], list(pids))
        return sorted(set(rows[keep, 1].tolist()))


def worker_init(inflight: InFlight | None = None, slot: int | None = None) -> None:
    """First thing in every worker: Ctrl-C is the parent's business."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if inflight is not None:
        inflight.claim(slot)


@contextmanager
def sigint_deferred():
    """Hold a SIGINT back while workers are forked; raise it afterwards."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is signal.SIG_IGN):  # e.g. a background job
        yield
        return
    got = []
    previous = signal.signal(signal.SIGINT, lambda *_: got.append(True))
    try:
        yield
    finally:
        # None: a handler set outside Python; the default is the closest we can restore
        signal.signal(signal.SIGINT, signal.default_int_handler if previous is None
                      else previous)
        if got:
            raise KeyboardInterrupt


def report_failure(stage: Path, message: str) -> None:
    """In a worker: leave one line for the parent, then exit at once (``os._exit``:
    no traceback, no exit handlers, nothing flushed into shared state)."""
    try:
        tmp = stage / f".tmp{FAILED_PREFIX}{os.getpid()}"
        tmp.write_text(message.replace("\n", " ") + "\n")
        os.replace(tmp, stage / f"{FAILED_PREFIX}{os.getpid()}")
    finally:
        os._exit(1)


def failures(stage: Path) -> list[str]:
    """The lines left by failed workers (report_failure), oldest first."""
    found = []
    for path in stage.glob(FAILED_PREFIX + "*"):
        try:
            found.append((path.stat().st_mtime_ns, path.read_text().strip()))
        except OSError:
            continue
    return [text for _, text in sorted(found) if text]


def describe_death(exitcodes: dict[int, int | None], inflight: InFlight,
                   key: Callable[[int], str], what: str = "a worker process") -> str:
    """One line for workers that ended abnormally: which file, and how it ended.
    ``exitcodes``: pid -> exit status (negative: killed by that signal; None:
    still running). The culprit is a worker that did not end by SIGTERM (the
    executor terminates the others itself) or, failing that, any ended one."""
    ended = {pid: c for pid, c in exitcodes.items() if c not in (None, 0)}
    culprits = {pid: c for pid, c in ended.items() if c != -signal.SIGTERM} or ended
    files = [name(key(i)) for i in inflight.samples(culprits or None)]
    codes = sorted(set(culprits.values()))
    how = " or ".join(_ending(c) for c in codes) if codes else "ended unexpectedly"
    oom = (" (SIGKILL is what the out-of-memory killer sends: is memory short?)"
           if -signal.SIGKILL in codes else "")
    if len(files) == 1:
        return f"{files[0]}: {what} {how} while converting it{oom}; nothing was written"
    listed = ", ".join(files[:5]) + (f" and {len(files) - 5} more" if len(files) > 5 else "")
    where = f" while converting one of {listed}" if files else " between files"
    return f"{what} {how}{where}{oom}; nothing was written"


def _ending(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def _exitcodes(processes: dict) -> dict:
    """pid -> exit status of the executor's workers, once one is known: the
    executor's own thread may be reaping the dead worker at this very moment
    (its status is then briefly unknown to us), so wait up to a second."""
    deadline = time.monotonic() + 1.0
    while True:
        codes = {pid: p.exitcode for pid, p in processes.items()}
        if any(c not in (None, 0) for c in codes.values()) or time.monotonic() > deadline:
            return codes
        time.sleep(0.01)


def ordered_map(fn: Callable, tasks: list, workers: int, inflight: InFlight,
                key: Callable[[int], str]) -> Iterator:
    """``fn(task)`` for every task in forked worker processes, results in task
    order, at most a few tasks per worker in flight (bounded memory). A worker
    that dies raises WorkerFailed naming the file it was on; on any exit before
    the end (an error, Ctrl-C) the workers are stopped before this returns."""
    workers = max(1, min(workers, len(tasks)))
    window = 3 * workers
    todo = iter(tasks)
    pending: deque = deque()
    ex = None
    processes: dict = {}  # pid -> Process: a dead worker's exit status is only there
    finished = False
    try:
        try:
            # Fork start method: the source is inherited, not pickled (STL-10's memory
            # map, CIFAR's arrays). With fork, the first submit forks every worker.
            with sigint_deferred():
                ex = ProcessPoolExecutor(workers, mp_context=mp.get_context("fork"),
                                         initializer=worker_init, initargs=(inflight,))
                try:
                    for task in todo:
                        pending.append(ex.submit(fn, task))
                        if len(pending) == window:
                            break
                finally:
                    # (the executor itself only says "terminated abruptly")
                    processes = dict(getattr(ex, "_processes", None) or {})
            while pending:
                result = pending.popleft().result()
                task = next(todo, None)
                if task is not None:
                    pending.append(ex.submit(fn, task))
                yield result
        except BrokenProcessPool:
            raise WorkerFailed(describe_death(_exitcodes(processes), inflight, key)) from None
        finished = True
    finally:
        if not finished:  # stop them now: nothing they would still do is wanted
            for p in processes.values():
                if p.exitcode is None:
                    p.terminate()
        if ex is not None:
            ex.shutdown(wait=True, cancel_futures=True)
