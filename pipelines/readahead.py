"""Work for the next positions of a deterministic stream, done ahead on a few
background threads, so that the thread that asks for it only collects it.

The DALI feeder (pipelines/loader_dali.py) is called by DALI in the thread that
calls ``pipe.run()``: the training loop. Its work per batch (reading each
sample's pages from the shards' memory maps, their CRC-32 checks, the crop
boxes) is ~8-10 ms of CPU for 256 ImageNet-size JPEGs (benchmarks/RESULTS.md).
Which batch comes next is known in advance ((epoch, b) -> (epoch, b + 1) ->
... -> (epoch + 1, 0)), so ``ReadAhead`` prepares the next ``depth`` positions
on ``threads`` threads while the current one trains. It pays off because that
work mostly runs without the GIL: zlib.crc32 releases it for buffers over
5 KiB, and a page fault on the memory map is taken inside that call.

Contract:
- ``take()`` returns ``prepare(at)`` and moves ``at`` on; an exception raised by
  ``prepare`` is raised by ``take()`` for that position, as if it had run in
  the caller, and ``at`` stays there (a position dropped by ``seek`` never
  raises).
- ``seek(pos)`` makes ``pos`` the next position: work for other positions is
  cancelled where it has not started, and its result dropped where it has.
- ``depth`` 0 prepares in the caller's thread, on demand (the synchronous
  path, kept as the reference for tests and the benchmark's "before").
- ``depth`` > 0: after ``take()`` returns position p, positions p+1 .. p+depth
  are queued or being prepared (``seek`` queues pos .. pos+depth-1 at once).
- Memory: at most ``depth`` prepared results wait; what the DALI feeder keeps
  per batch is small (views of the memory maps, the boxes), but preparing it
  touches the batch's pages: ~25 MB of page cache per batch ahead at ImageNet
  size.
- Threads: ``threads`` daemon threads named ``readahead-<i>``, started on first
  use. Between jobs they hold no reference to their owner: when it is collected, its
  finaliser cancels what has not started and the threads end; at interpreter
  exit they are abandoned (a read stuck on a dead disk never holds the process).
  A process forked with work in flight starts threads of its own (the parent's
  do not exist in the child) and redoes that work rather than wait for it.
"""

from __future__ import annotations

import os
import queue
import threading
import weakref
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future


def _work(jobs: queue.SimpleQueue) -> None:
    """A read-ahead thread: runs jobs until it gets None. It holds no reference
    to the ReadAhead that feeds it (only to the job in hand), so that its owner
    can be collected and stop it."""
    while (job := jobs.get()) is not None:
        fut, fn, arg = job
        del job
        if fut.set_running_or_notify_cancel():  # False: cancelled by a seek
            try:
                fut.set_result(fn(arg))
            except BaseException as e:  # noqa: BLE001 - handed to the taker as is
                fut.set_exception(e)
        del fut, fn, arg


def _stop(jobs: queue.SimpleQueue, threads: int) -> None:
    """Cancel what has not started and let every thread end."""
    while True:
        try:
            job = jobs.get_nowait()
        except queue.Empty:
            break
        if job is not None:
            job[0].cancel()
    for _ in range(threads):
        jobs.put(None)


class ReadAhead:
    def __init__(self, prepare: Callable, after: Callable, start: Hashable, depth: int,
                 threads: int):
        if depth < 0 or (depth and threads < 1):
            raise ValueError(f"read-ahead depth {depth} with {threads} threads")
        self.prepare, self.after, self.depth, self.threads = prepare, after, depth, threads
        self.at = start
        self._queued: deque = deque()  # (position, future): at, after(at), ... in order
        self._jobs: queue.SimpleQueue | None = None  # started on first use
        self._pid = os.getpid()

    def seek(self, pos: Hashable) -> None:
        for _, fut in self._queued:
            fut.cancel()  # not started: never runs; running: its result is dropped
        self._queued.clear()
        self.at = pos
        self._fill()  # start on the new position now, before it is asked for

    def take(self):
        if not self.depth:
            out = self.prepare(self.at)
            self.at = self.after(self.at)
            return out
        if self._pid != os.getpid():  # forked: the parent's threads are not in this process
            self._queued.clear()
            self._jobs, self._pid = None, os.getpid()
        if not self._queued:
            self._fill()
        pos, fut = self._queued.popleft()
        assert pos == self.at, "read-ahead fell out of step with its stream"
        self.at = self.after(self.at)
        self._fill()  # the next positions are queued before this one is waited for
        try:
            return fut.result()
        except BaseException:  # as if prepared here: raised now, and still next
            self.seek(pos)
            raise

    def _fill(self) -> None:
        """Queue work until the next ``depth`` positions from ``at`` are queued."""
        if not self.depth:
            return
        if self._jobs is None:
            self._jobs = queue.SimpleQueue()
            for i in range(self.threads):
                # daemon: a read stuck on a dead disk never holds the process at exit
                threading.Thread(target=_work, args=(self._jobs,), daemon=True,
                                 name=f"readahead-{i}").start()
            weakref.finalize(self, _stop, self._jobs, self.threads)
        pos = self._queued[-1][0] if self._queued else None
        while len(self._queued) < self.depth:
            pos = self.at if pos is None else self.after(pos)
            fut: Future = Future()
            self._jobs.put((fut, self.prepare, pos))
            self._queued.append((pos, fut))
