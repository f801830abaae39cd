"""The training loop's bookkeeping; trainer/run.py sets up and runs the loop.

``Run`` is what the set-up resolved and the loop only reads; ``Loop`` is what the
loop carries from step to step. ``save`` writes the checkpoint and the backbone
next to it; ``log_line`` is the work of a logged step: the one read of the
device-side Tally (RankMe's value of the line in the same copy: trainer/monitors.py),
skipped-step accounting, the --max-bad-steps stop and the metrics line;
``epoch_end`` is the online kNN's line (trainer/online_knn.py). Between logged
steps the loop reads nothing from the device, so the host queues steps ahead
(trainer/step.py).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from trainer import checkpoint, dist
from trainer.config import Config
from trainer.models import backbone_state_dict
from trainer.monitors import RankMe
from trainer.online_knn import OnlineKnn, knn_line
from trainer.runlog import Metrics
from trainer.step import Tally
from trainer.systems import Systems
from trainer.watch import Watch


class NonFinite(RuntimeError):
    """--max-bad-steps non-finite losses in a row, or a non-finite model at a checkpoint."""


def kept(run_dir: Path) -> str:
    """What a run stopped by non-finite values leaves, truthfully."""
    path = run_dir / checkpoint.NAME
    if path.is_file():
        try:
            at = torch.load(path, map_location="cpu", weights_only=True)["step"]
        except Exception:  # noqa: BLE001 - only the message depends on it
            at = "?"
        return (f"the last good checkpoint (step {at}) is kept. Check the data and --resume, "
                "or start over with a lower --lr (--overwrite reuses this folder)")
    return ("no checkpoint had been written yet, so there is nothing to keep. Start over with a "
            "lower --lr (add --overwrite to reuse this folder), or check the data")


@dataclass
class Run:
    """What the set-up resolved; fixed for the whole loop. ``metrics`` and
    ``watch`` only on the main rank (None on the others); the monitors (None: off)
    on every rank."""
    cfg: Config
    env: dist.Env
    run_dir: Path
    loader: object
    model: torch.nn.Module      # what the step calls (compiled, DDP-wrapped)
    objective: torch.nn.Module  # what the checkpoint holds
    optimizer: torch.optim.Optimizer
    sysm: Systems
    spe: int                    # steps per epoch
    total: int                  # steps of the whole schedule (lr, momentum)
    warmup: int
    stop: int                   # the step this run stops at (--max-steps)
    ckpt_every: int
    resolved: dict
    metrics: Metrics | None
    watch: Watch | None
    rankme: RankMe | None = None      # --rankme (trainer/monitors.py)
    knn: OnlineKnn | None = None      # --test-data, --knn-bank, --knn-test


@dataclass
class Loop:
    """What the loop carries from step to step. ``tally``: sums and counters on
    the device, read once per logged line (trainer/step.py)."""
    step: int                   # steps finished
    step_last: int              # the step of the last logged line (or of the start)
    bar: object                 # the progress bar (runlog.progress_bar)
    tally: Tally = field(default_factory=Tally)
    t_last: float = field(default_factory=time.perf_counter)  # when step_last was
    skipped_total: int = 0
    last: dict[str, float] = field(default_factory=dict)  # the last line's means


def _state(objective, optimizer, scaler, step: int) -> dict:
    return {"step": step, "model": objective.state_dict(), "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None}


def save(run: Run, at: int) -> None:
    """checkpoint.pt at step ``at`` (main rank), refused if the model is not finite."""
    if run.env.main:
        state = _state(run.objective, run.optimizer, run.sysm.scaler, at)
        if not checkpoint.all_finite(state["model"]):
            raise NonFinite(f"step {at}: the model holds non-finite values (weights or "
                            "BN statistics); " + kept(run.run_dir))
        checkpoint.save_atomic(state, run.run_dir / checkpoint.NAME)
        # the backbone of every checkpoint next to it: backbone.pt always is the
        # checkpoint's, whatever stops the run (trainer/checkpoint.py)
        checkpoint.save_backbone(run.run_dir, backbone_state_dict(run.objective.method.backbone),
                                 at, finished=at >= run.total)


def log_line(run: Run, loop: Loop, lr: float, stop_here: bool) -> bool:
    """A logged step: reads the tally (a collective under DDP, at the same steps on
    every rank), reports skipped steps, stops at --max-bad-steps, writes the metrics
    line. ``stop_here``: this rank caught a signal; returns whether any rank did."""
    cfg, step = run.cfg, loop.step
    now = time.perf_counter()
    rate = (step - loop.step_last) * cfg.batch_size / max(now - loop.t_last, 1e-9)
    got = loop.tally.read(stop_here, run.rankme.line() if run.rankme is not None else None)
    loop.skipped_total += got.skipped
    if got.skipped:
        what = ("step skipped" if got.skipped == 1 else
                f"{got.skipped} steps skipped since step {loop.step_last}")
        print(f"step {step}: non-finite loss, {what} ({got.row} in a row)", file=sys.stderr)
    if got.row >= cfg.max_bad_steps:
        if run.env.main:
            run.metrics.write({"step": step, "epoch": step / run.spe, "lr": lr,
                               "skipped_steps": loop.skipped_total,
                               "stopped": "non-finite loss"})
        raise NonFinite(f"stopped at step {step}: {got.row} steps in a row had a non-finite "
                        f"loss (--max-bad-steps {cfg.max_bad_steps}); " + kept(run.run_dir))
    loop.last = got.means
    if run.env.main:
        run.metrics.write({"step": step, "epoch": step / run.spe, "lr": lr,
                           "images_per_s": rate, "skipped_steps": loop.skipped_total,
                           "damaged_samples": run.loader.damage.count, **loop.last,
                           **got.extra})
        if loop.last:
            loop.bar.set_postfix(loss=f"{loop.last['loss']:.4f}", img_s=f"{rate:.0f}")
    loop.t_last, loop.step_last = now, step
    return got.stop


def epoch_end(run: Run, loop: Loop) -> None:
    """At an epoch's end (and the run's last step): the online kNN, on every rank (it
    gathers features under DDP, at the same step on every rank); the main rank writes
    its line. Its seconds are left out of the next line's images_per_s."""
    if run.knn is None:
        return
    line = knn_line(run.knn, run.objective.method.backbone, run.sysm.device, run.sysm.dtype,
                    run.sysm.autocast, loop.step, run.spe)
    loop.t_last += line["knn_s"]
    if run.env.main:
        run.metrics.write(line)
