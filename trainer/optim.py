"""Optimisers (SGD, LARS) and the learning-rate schedule.

Learning rate: ``lr * global_batch / 256`` (Goyal et al. 2017's linear
scaling, as the AugSelf code does), linear warm-up from 0 over the warm-up
steps, then cosine decay to 0 at the last step of the last epoch, set per
step. Groups marked ``fixed_lr`` (SimSiam's predictor) keep the scaled base
rate throughout.
"""

from __future__ import annotations

import math

import torch

from trainer import masked


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


class LARS(torch.optim.Optimizer):
    """LARS (You et al. 2017) as used by BYOL/SimCLR: for each weight matrix the
    update is scaled by trust = eta * |w| / |g + wd w| (1 where either norm is 0);
    biases and norm layers (1-D parameters) get neither weight decay nor
    adaptation. Momentum buffer b <- m b + d, then w <- w - lr b.

    Multi-tensor (foreach) ops over each group's parameters: a fixed ~15 launches
    per group instead of ~13 per parameter (RN50 has 161: ~2,000 launches a step
    eager on a GPU). tests/test_optim.py holds it to the per-parameter loop.

    ``found_inf`` (an attribute, as torch's GradScaler sets it on a fused
    optimiser): a 0-dim float tensor; where it is 1 the step changes nothing,
    decided on the device (trainer/masked.py)."""

    # eta 1e-3: the trust coefficient of You et al. and of BYOL's and SimCLR's LARS;
    # momentum and decay have no default: build() always passes the run's
    def __init__(self, params, lr: float, momentum: float, weight_decay: float,
                 eta: float = 1e-3):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      eta=eta))

    @torch.no_grad()
    def step(self, closure=None):
        for g in self.param_groups:
            ps = [p for p in g["params"] if p.grad is not None]
            if not ps:
                continue
            mats = [p for p in ps if p.ndim > 1]
            d = {id(p): p.grad for p in ps if p.ndim <= 1}
            if mats:
                dm = torch._foreach_add([p.grad for p in mats], mats, alpha=g["weight_decay"])
                w_norm = torch.stack(torch._foreach_norm(mats))
                d_norm = torch.stack(torch._foreach_norm(dm))
                trust = torch.where((w_norm > 0) & (d_norm > 0), g["eta"] * w_norm / d_norm,
                                    torch.ones_like(w_norm))
                torch._foreach_mul_(dm, trust.to(dm[0].dtype).unbind())
                d.update((id(p), x) for p, x in zip(mats, dm))
            grads = [d[id(p)] for p in ps]
            bufs = []
            for p in ps:  # zeros on the first step: m * 0 + d = d exactly, as a clone
                st = self.state[p]
                if "momentum_buffer" not in st:
                    st["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                bufs.append(st["momentum_buffer"])
            found_inf = getattr(self, "found_inf", None)
            if found_inf is None:
                torch._foreach_mul_(bufs, g["momentum"])
                torch._foreach_add_(bufs, grads)
                torch._foreach_add_(ps, bufs, alpha=-g["lr"])
                continue
            new_bufs = torch._foreach_mul(bufs, g["momentum"])  # the same operations,
            torch._foreach_add_(new_bufs, grads)                 # out of place
            new_ps = torch._foreach_add(ps, new_bufs, alpha=-g["lr"])
            masked.assign(found_inf == 0, bufs + ps, new_bufs + new_ps)


def build(groups: list[dict], name: str, lr: float, momentum: float, weight_decay: float):
    """``groups``: [{"params", "fixed_lr"}]. Each group remembers its base rate."""
    groups = [{"params": g["params"], "fixed_lr": g["fixed_lr"], "base_lr": lr}
              for g in groups if g["params"]]
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    # fused: one kernel per group for the whole update (decay, momentum, step) on
    # CUDA and CPU; the issue-10 measurement on an H100 (RN50 SimSiam+AugSelf,
    # whole objective compiled): 2,842 img/s against 2,827 with foreach.
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay,
                           fused=True)


def zero_momentum(optimizer) -> None:
    """Give every parameter a momentum buffer of zeros where it has none yet.

    torch's fused SGD creates its momentum buffers *uninitialised* on its first
    step (``empty_like``, then "buf = grad"), so a first step it skips by
    ``found_inf`` leaves whatever the memory held, which the next step multiplies
    by the momentum and keeps. Our skipped steps do that, and so does torch's
    GradScaler: its first fp16 steps usually overflow at the initial scale. With
    zeros first, the step computes "buf = m * 0 + grad": the same values. Done
    once per state dict (a resume loads a new one; SwAV's prototypes get their
    first gradient only after hundreds of steps, hence every parameter)."""
    if getattr(optimizer, "_zeroed_state", None) is optimizer.state:
        return
    for g in optimizer.param_groups:
        if g.get("momentum"):
            for p in g["params"]:
                st = optimizer.state[p]
                if st.get("momentum_buffer") is None:
                    st["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    optimizer._zeroed_state = optimizer.state


def step(optimizer, found_inf: torch.Tensor | None = None) -> None:
    """``optimizer.step()``; with ``found_inf`` (0-dim float on the device, 1.0 for
    a step not to apply) no parameter or state changes where it is 1, without the
    host reading it: torch's fused SGD skips its kernel on the device (the
    GradScaler's contract: a ``found_inf`` attribute), LARS selects (above)."""
    if found_inf is None:
        optimizer.step()
        return
    zero_momentum(optimizer)
    optimizer.found_inf = found_inf
    try:
        optimizer.step()
    finally:
        del optimizer.found_inf


def set_lr(optimizer, step: int, total: int, warmup: int) -> float:
    """Set this step's rate on every scheduled group; returns it (0.0 when every
    group keeps a fixed rate)."""
    now = 0.0
    for g in optimizer.param_groups:
        g["lr"] = g["base_lr"] if g["fixed_lr"] else lr_at(step, total, warmup, g["base_lr"])
        if not g["fixed_lr"]:
            now = g["lr"]
    return now
