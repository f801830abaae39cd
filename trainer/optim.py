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


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


class LARS(torch.optim.Optimizer):
    """LARS (You et al. 2017) as used by BYOL/SimCLR: for each weight matrix the
    update is scaled by trust = eta * |w| / |g + wd w|; biases and norm layers
    (1-D parameters) get neither weight decay nor adaptation."""

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 1e-3):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      eta=eta))

    @torch.no_grad()
    def step(self, closure=None):
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if p.ndim > 1:
                    d = d.add(p, alpha=g["weight_decay"])
                    w_norm, d_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(d)
                    trust = torch.where((w_norm > 0) & (d_norm > 0),
                                        g["eta"] * w_norm / d_norm, torch.ones_like(w_norm))
                    d = d.mul(trust)
                buf = self.state[p].get("momentum_buffer")
                if buf is None:
                    buf = self.state[p]["momentum_buffer"] = d.clone()
                else:
                    buf.mul_(g["momentum"]).add_(d)
                p.add_(buf, alpha=-g["lr"])


def build(groups: list[dict], name: str, lr: float, momentum: float, weight_decay: float):
    """``groups``: [{"params", "fixed_lr"}]. Each group remembers its base rate."""
    groups = [{"params": g["params"], "fixed_lr": g["fixed_lr"], "base_lr": lr}
              for g in groups if g["params"]]
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    # foreach: one multi-tensor op per update stage for every parameter at once, on
    # any device (CUDA's default, CPU's not): the same arithmetic, a few launches.
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay,
                           foreach=True)


def set_lr(optimizer, step: int, total: int, warmup: int) -> float:
    """Set this step's rate on every scheduled group; returns it."""
    now = 0.0
    for g in optimizer.param_groups:
        g["lr"] = g["base_lr"] if g["fixed_lr"] else lr_at(step, total, warmup, g["base_lr"])
        if not g["fixed_lr"]:
            now = g["lr"]
    return now
