"""Images per second of the training step: on one batch kept on the device (the
model-only ceiling, no loading) and through a loader (the loop's work). Used by
benchmarks/e2e.py and ``python -m tools.doctor``; both quote the ratio e2e / ceiling
measured side by side, so the figures carry the same meaning wherever they run.

Timing: CUDA events around the queued work on a GPU (the host returns before the
GPU finishes), the wall clock on a CPU; always after ``warmup`` steps, which absorb
compilation, cuDNN's autotuning and the batches a loader holds ready ahead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch


class Timer:
    """Seconds between start() and stop(): CUDA events on a GPU (after the work
    queued in between), the wall clock on a CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def start(self):
        if self.cuda:
            self.a, self.b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(
                enable_timing=True)
            self.a.record()
        else:
            self.t0 = time.perf_counter()

    def stop(self) -> float:
        if self.cuda:
            self.b.record()
            self.b.synchronize()
            return self.a.elapsed_time(self.b) / 1000
        return time.perf_counter() - self.t0


@dataclass
class Trainee:
    """What a step needs: ``model`` is what to call (compiled or not), ``objective``
    the bare module, ``sysm`` the run's systems choices (trainer/systems.py)."""
    model: torch.nn.Module
    objective: torch.nn.Module
    optimizer: torch.optim.Optimizer
    sysm: object
    check_finite: bool = True  # the loop's default (--check-finite)

    def step(self, batch, i: int) -> None:
        from trainer.step import train_step

        train_step(self.model, self.objective, self.optimizer, self.sysm, batch, i, 0.5,
                   check_finite=self.check_finite)


def ceiling(t: Trainee, batch, steps: int, warmup: int) -> float:
    """Images/s on one batch kept on the device."""
    for i in range(warmup):
        t.step(batch, i)
    timer = Timer(t.sysm.device)
    timer.start()
    for i in range(steps):
        t.step(batch, i)
    return steps * len(batch) / timer.stop()


def end_to_end(t: Trainee, loader, epoch: int, steps: int, warmup: int) -> tuple[float, float]:
    """(images/s through the loader, share of the host's time spent in next())."""
    loader.set_epoch(epoch)
    it = iter(loader)
    for i in range(warmup):
        t.step(next(it), i)
    timer, waited, n = Timer(t.sysm.device), 0.0, 0
    timer.start()
    t0 = time.perf_counter()
    for i in range(steps):
        w = time.perf_counter()
        batch = next(it)
        waited += time.perf_counter() - w
        n += len(batch)
        t.step(batch, i)
    seconds = timer.stop()
    host = time.perf_counter() - t0
    getattr(it, "close", lambda: None)()  # a generator's: the loader's epoch ends
    return n / seconds, waited / host


def loader_rate(loader, epoch: int, batches: int, warmup: int) -> float:
    """Images/s the loader alone delivers (the device synchronised at both ends)."""
    loader.set_epoch(epoch)
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    t0, n = time.perf_counter(), 0
    for _ in range(batches):
        n += len(next(it))
    sync()
    dt = time.perf_counter() - t0
    getattr(it, "close", lambda: None)()  # a generator's: the loader's epoch ends
    return n / dt
