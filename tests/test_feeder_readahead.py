"""The DALI feeder's work (per-sample checksums, which read each sample's pages,
the encoded views, the crop boxes) runs on read-ahead threads, never in the
thread that iterates the loader (DALI calls the feeder in the thread that calls
``pipe.run()``: the training loop), the first batch after a seek included: the
callback then waits for the read-ahead thread rather than doing the work itself.
The batches are those of the synchronous feeder (READ_AHEAD 0, the code path
before read-ahead) across a resume mid-epoch, an abandoned epoch and a fresh
loader started mid-epoch; a failure while preparing a batch surfaces as it did;
the threads end with their loader and behave after a fork. Speed is measured
by benchmarks/feeder.py, not here."""

import gc
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from conftest import ROOT

from pipelines import checks, loader_dali
from pipelines.build import LoaderConfig, build_loader
from pipelines.readahead import ReadAhead
from pipelines.records import Records


def _loader(data, **kw):
    cfg = dict(data=str(data), backend="dali-cpu", size=16, batch_size=32, workers=1,
               device="cpu", keep_raw=True, seed=3)
    return build_loader(LoaderConfig(**{**cfg, **kw}))


def _batches(loader, epoch, skip=0, stop=None):
    loader.set_epoch(epoch, skip)
    out = []
    for b in loader:
        out.append((epoch, b.index.clone(), b.labels.clone(),
                    {k: t.clone() for k, t in b.params.items()}, [r.clone() for r in b.raw]))
        if stop is not None and len(out) == stop:
            break  # abandoned: DALI and the read-ahead hold later batches in flight
    return out


def _scenario(data):
    """Whole epoch 0; epoch 1 abandoned after one batch, then resumed at batch 3;
    whole epoch 2; a fresh loader resumed at (epoch 2, batch 5)."""
    loader = _loader(data)
    got = _batches(loader, 0) + _batches(loader, 1, stop=1) + _batches(loader, 1, skip=3)
    got += _batches(loader, 2)
    return got + _batches(_loader(data), 2, skip=5), loader.plan


def _record_threads(monkeypatch):
    """Wrap the feeder's reads, checksums and boxes: each call notes its thread."""
    seen = []

    def noting(name, fn):
        def wrapper(*a, **kw):
            seen.append((name, threading.current_thread()))
            return fn(*a, **kw)
        return wrapper

    monkeypatch.setattr(Records, "damaged", noting("damaged", Records.damaged))
    monkeypatch.setattr(Records, "encoded", noting("encoded", Records.encoded))
    monkeypatch.setattr(checks, "crc_records_sample",
                        noting("crc", checks.crc_records_sample))
    monkeypatch.setattr(loader_dali, "crop_boxes", noting("boxes", loader_dali.crop_boxes))
    return seen


@pytest.mark.dali
def test_the_iterating_thread_never_reads_and_batches_are_unchanged(tiny_dataset,
                                                                     monkeypatch):
    here = threading.current_thread()  # the training loop's thread: it calls pipe.run()
    seen = _record_threads(monkeypatch)
    monkeypatch.setattr(loader_dali, "READ_AHEAD", 0)
    want, plan = _scenario(tiny_dataset)
    # the wrappers do see the synchronous feeder's work, in this thread
    assert {n for n, t in seen if t is here} == {"damaged", "encoded", "crc", "boxes"}

    seen.clear()
    monkeypatch.setattr(loader_dali, "READ_AHEAD", 3)
    got, _ = _scenario(tiny_dataset)
    on_here = sorted({n for n, t in seen if t is here})
    assert not on_here, f"the iterating thread ran the feeder's {on_here}"
    assert {n for n, _ in seen} == {"damaged", "encoded", "crc", "boxes"}
    assert all(t.name.startswith("readahead") for _, t in seen)

    assert len(got) == len(want) == 8 + 1 + 5 + 8 + 3
    for (e1, i1, l1, p1, r1), (e2, i2, l2, p2, r2) in zip(got, want):
        assert e1 == e2 and torch.equal(i1, i2) and torch.equal(l1, l2)
        assert all(torch.equal(p1[k], p2[k]) for k in p2)
        assert all(torch.equal(a, b) for a, b in zip(r1, r2))
    # and the order is the plan's (independent of either feeder)
    B = plan.batch_size
    starts = [(0, b) for b in range(8)] + [(1, 0)] + [(1, b) for b in range(3, 8)] \
        + [(2, b) for b in range(8)] + [(2, b) for b in range(5, 8)]
    for (e, b), (e1, i1, *_) in zip(starts, got):
        assert e1 == e
        assert np.array_equal(i1.numpy(), np.asarray(plan.order(e))[b * B:(b + 1) * B])


def _fail_at(monkeypatch, plan, epoch, batch):
    """Make preparing (epoch, batch) raise OSError, as a failed read would."""
    B = plan.batch_size
    bad = set(np.asarray(plan.order(epoch))[batch * B:(batch + 1) * B].tolist())
    real = loader_dali.crop_boxes

    def boxes(heights, widths, views, seed, e, index):
        if e == epoch and set(index.tolist()) == bad:
            raise OSError(f"cannot read batch {batch}")
        return real(heights, widths, views, seed, e, index)

    monkeypatch.setattr(loader_dali, "crop_boxes", boxes)


@pytest.mark.dali
def test_a_failure_while_preparing_surfaces_as_before(tiny_dataset, monkeypatch):
    """Raised at the same batch with the same message with and without read-ahead;
    a failing batch that a seek dropped (read ahead of an abandoned epoch) never
    raises."""
    outcomes = []
    for depth in (0, 3):
        monkeypatch.setattr(loader_dali, "READ_AHEAD", depth)
        loader = _loader(tiny_dataset)
        _fail_at(monkeypatch, loader.plan, 0, 6)
        n = 0
        loader.set_epoch(0)
        with pytest.raises(OSError) as info:
            for _ in loader:
                n += 1
        outcomes.append((n, str(info.value)))
        monkeypatch.undo()

    assert outcomes[0] == outcomes[1] and outcomes[0][1] == "cannot read batch 6"
    assert outcomes[0][0] < 8

    monkeypatch.setattr(loader_dali, "READ_AHEAD", 3)
    loader = _loader(tiny_dataset)
    _fail_at(monkeypatch, loader.plan, 0, 4)  # queued when batch 0 is handed over
    assert len(_batches(loader, 0, stop=1)) == 1
    assert len(_batches(loader, 1)) == 8


def _readahead_threads():
    return {t for t in threading.enumerate() if t.name.startswith("readahead")}


@pytest.mark.dali
def test_read_ahead_threads_end_with_their_loader(tiny_dataset, monkeypatch):
    monkeypatch.setattr(loader_dali, "READ_AHEAD", 3)
    before = _readahead_threads()  # other tests' loaders may not be collected yet
    loader = _loader(tiny_dataset)
    _batches(loader, 0, stop=2)
    mine = _readahead_threads() - before
    assert len(mine) == loader_dali.READ_THREADS
    assert all(t.daemon for t in mine)  # never what keeps a process from exiting
    del loader
    gc.collect()
    for t in mine:
        t.join(timeout=60)  # a liveness bound, not a timing: they end once told to
    assert not any(t.is_alive() for t in mine)


FORK_CHILD = """
import os, signal, sys, threading
from pipelines.readahead import ReadAhead
parent = os.getpid()
release = threading.Event()
def prepare(pos):
    if os.getpid() == parent:
        release.wait()  # the parent's work stays in flight across the fork
    return pos, os.getpid()
ahead = ReadAhead(prepare, lambda p: p + 1, 0, depth=2, threads=1)
ahead.seek(0)  # 0 and 1 queued; the parent's thread is held in 0
pid = os.fork()
if pid == 0:
    signal.alarm(60)  # a child waiting on the parent's threads dies rather than hangs
    got = [ahead.take() for _ in range(3)]
    os._exit(0 if got == [(p, os.getpid()) for p in range(3)] else 1)
_, status = os.waitpid(pid, 0)
release.set()
assert [ahead.take() for _ in range(3)] == [(p, parent) for p in range(3)]
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_read_ahead_after_fork_redoes_work_the_parent_had_in_flight():
    """Work queued in the parent and unfinished at fork: the child has none of the
    parent's threads, so it must prepare that work itself rather than wait forever.
    In a fresh interpreter: forking this test process (DALI's threads) is not."""
    r = subprocess.run([sys.executable, "-c", FORK_CHILD], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_read_ahead_keeps_the_order_through_seeks_and_errors(depth):
    """The stream's order whatever the depth; a failed position raises in the
    taker and is the next one taken (prepared again), as in the synchronous path."""
    fail_once = {2, 11}

    def prepare(pos):
        if pos in fail_once:
            fail_once.discard(pos)
            raise OSError(f"cannot read {pos}")
        return pos, threading.current_thread().name

    ahead = ReadAhead(prepare, lambda p: p + 1, 0, depth, threads=2)
    got = [ahead.take() for _ in range(2)]
    with pytest.raises(OSError, match="cannot read 2"):
        ahead.take()
    got += [ahead.take() for _ in range(2)]
    ahead.seek(10)
    got.append(ahead.take())
    with pytest.raises(OSError, match="cannot read 11"):
        ahead.take()
    ahead.seek(20)  # 11 was dropped, not retried
    got += [ahead.take() for _ in range(2)]
    assert [p for p, _ in got] == [0, 1, 2, 3, 10, 20, 21]
    here = threading.current_thread().name
    assert all((name == here) == (depth == 0) for _, name in got)
