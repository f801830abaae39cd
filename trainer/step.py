"""One optimisation step, and what the loop counts between two logged lines.

A step whose loss is not finite (on any rank) is not applied, and the host never
waits to find that out. ``bad`` is computed on the device and every change the
step makes is selected by it there (trainer/masked.py):

- the optimiser's update: torch's fused SGD gets it as ``found_inf`` (the
  GradScaler's contract) and skips its kernel; LARS selects (trainer/optim.py);
- what the forward pass changed in place (every BN running statistic, SwAV's
  prototype normalisation: ``Objective.forward_state()``) is put back from a
  copy taken before it;
- the hooks after the step (momentum encoders, MoCo's queue) get ``ok`` and
  leave everything as it was when it is false.

So a skipped step leaves every parameter, buffer and optimiser state bit for bit
as it was (tests/test_skipped_step.py). Before, the host read the flag
(``.item()``, tests/test_sync_count.py: 1 read per step, now 0) after the
forward pass and returned early: the optimiser and the hooks were spared, but
the forward pass had already moved the BN statistics (to NaN on a NaN batch)
and MoCo had enqueued its keys. The backward pass now runs on a skipped step
too; its result is dropped. Under DDP ``bad`` is all-reduced on the device each
step, so every rank skips the same steps. With fp16 the GradScaler makes the
optimiser's decision from the gradients (made NaN on a skipped step, below);
it reads its flag on the host only for an optimiser without ``found_inf``
support (LARS: torch's ``GradScaler.step``), not for the fused SGD.

``Tally`` sums the logged values of the applied steps, the skipped steps and the
current run of them on the device; the loop reads it once per logged line
(--log-every): that is when a skipped step is reported, when --max-bad-steps is
checked (the run stops at the first logged line at or after the limit; the
steps between are skipped like the others) and, under DDP, when a SIGTERM or
SIGINT on any rank reaches every rank (they all stop after the same step).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from trainer import dist, masked, optim, systems


def train_step(model, objective, optimizer, sysm: systems.Systems, batch, step: int,
               progress: float, check_finite: bool = False) -> dict[str, torch.Tensor]:
    """Forward under the run's autocast, backward (scaled for fp16), the
    objective's hooks around the optimiser step. ``model`` is what to call
    (DDP-wrapped or compiled), ``objective`` the bare module; ``step`` counts from
    0 and ``progress`` is the fraction of training done after it.

    ``check_finite``: a step whose loss is not finite is not applied (module
    docstring); the returned dict then has ``skipped``, a 0-dim float tensor on
    the device (1.0: not applied). Its price: a copy of the BN statistics before
    the forward pass, and a select over each state the step changes."""
    kept = masked.Kept(objective.forward_state()) if check_finite else None
    with sysm.autocast():
        out = model(batch)
    loss = out["loss"]
    optimizer.zero_grad(set_to_none=True)
    if kept is None:
        (sysm.scaler.scale(loss) if sysm.scaler is not None else loss).backward()
        objective.after_backward(step)
        _optimise(optimizer, sysm, None)
        objective.after_step(progress)
        return out
    bad = dist.all_reduce_max((~torch.isfinite(loss.detach())).float().reshape(()))
    ok = bad == 0
    if sysm.scaler is not None:
        # The GradScaler decides from the gradients; a non-finite loss can still leave
        # some finite (those of the terms that are), so they are all made NaN: the
        # scaler skips the step (and backs its scale off, as after an overflow).
        (sysm.scaler.scale(loss) * torch.where(ok, 1.0, float("nan"))).backward()
    else:
        loss.backward()
    # after the backward pass, which reads the running statistics it saved (autograd
    # checks their version: a copy into them before it raises)
    kept.restore_unless(ok)
    objective.after_backward(step)
    _optimise(optimizer, sysm, bad)
    objective.after_step(progress, ok)
    out["skipped"] = bad
    return out


def _optimise(optimizer, sysm: systems.Systems, bad: torch.Tensor | None) -> None:
    if sysm.scaler is not None:
        optim.zero_momentum(optimizer)  # the scaler skips steps too
        sysm.scaler.step(optimizer)
        sysm.scaler.update()
    else:
        optim.step(optimizer, bad)


@dataclass
class Read:
    """What the host learns at a logged line."""
    means: dict[str, float]  # over the applied steps since the last line and every rank
    skipped: int             # steps skipped since the last line
    row: int                 # non-finite steps in a row, up to this one
    stop: bool               # a SIGTERM/SIGINT was caught on some rank
    extra: dict[str, float] = field(default_factory=dict)  # read()'s ``extra``, rank mean


class Tally:
    """The loop's counters between two logged lines, kept on the device: adding a
    step's output costs a few small kernels and no host read."""

    def __init__(self):
        self.row = None
        self._reset()

    def _reset(self):
        self.keys, self.sums, self.applied, self.skipped, self.steps = None, None, None, None, 0

    def add(self, out: dict[str, torch.Tensor]) -> None:
        bad = out.pop("skipped", None)
        keys = tuple(out)
        vals = torch.stack([v.detach().float().reshape(()) for v in out.values()])
        if self.keys is None:
            self.keys = keys
            self.sums, self.applied = torch.zeros_like(vals), torch.zeros_like(vals[0])
            self.skipped = torch.zeros_like(vals[0])
            if self.row is None:
                self.row = torch.zeros_like(vals[0])
        elif keys != self.keys:
            raise RuntimeError(f"a step logged {keys}, the one before {self.keys}")
        self.steps += 1
        if bad is None:
            self.sums += vals
            self.applied += 1
            return
        self.sums += torch.where(bad > 0, 0.0, vals)  # a skipped step's NaN stays out
        self.applied += 1 - bad
        self.skipped += bad
        self.row = (self.row + 1) * bad

    def read(self, stop_here: bool, extra: dict[str, torch.Tensor] | None = None) -> Read:
        """The means and counters since the last read, on every rank (a collective
        under DDP: every rank calls it at the same steps); one device-to-host copy.
        ``stop_here``: this rank caught a signal. ``extra``: this line's monitors
        (0-dim device values, trainer/monitors.py), averaged over the ranks with the
        means and read in the same copy."""
        if self.keys is None:  # no step since the last line
            return Read({}, 0, 0, stop_here)
        extra = extra or {}
        means = self.sums / self.applied.clamp(min=1)
        mine = [means, *(v.detach().to(means.dtype).reshape(1) for v in extra.values())]
        summed = dist.all_reduce_sum(torch.cat([*mine, means.new_tensor([float(stop_here)])]))
        values = torch.cat([summed[:-1] / dist.world(), summed[-1:],
                            torch.stack([self.applied, self.skipped, self.row])]).tolist()
        n, m = len(self.keys), len(extra)
        applied, skipped, row = values[n + m + 1:]
        got = Read(dict(sorted(zip(self.keys, values[:n]))) if applied else {}, round(skipped),
                   round(row), values[n + m] > 0, dict(zip(extra, values[n:n + m])))
        self._reset()
        return got
