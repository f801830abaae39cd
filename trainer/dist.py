"""torch.distributed from torchrun's environment, and the few collectives the
losses need. Every helper is the identity in a single process, so the code
path is the same whether or not torchrun started us.

Collectives are written with all_reduce/all_gather only: gloo (CPU) has no
reduce_scatter, which torch.distributed.nn's all_gather backward would need.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as td


@dataclass(frozen=True)
class Env:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def peer_failure(e: BaseException) -> bool:
    """Whether ``e`` is a collective failing because another rank went away
    (gloo: the peer closed its connection; nccl: a DistError)."""
    text = str(e)
    return isinstance(e, getattr(td, "DistError", ())) or "closed by peer" in text \
        or "Connection reset by peer" in text


def init(device_type: str) -> Env:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK);
    a plain `python` start is a world of one. nccl on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Env()
    env = Env(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not td.is_initialized():
        td.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return env


def shutdown() -> None:
    if td.is_initialized():
        td.destroy_process_group()


def active() -> bool:
    return td.is_available() and td.is_initialized() and td.get_world_size() > 1


def rank() -> int:
    return td.get_rank() if active() else 0


def world() -> int:
    return td.get_world_size() if active() else 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, no gradient (a copy; ``t`` is left alone)."""
    if not active():
        return t
    t = t.detach().clone()
    td.all_reduce(t)
    return t


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    if not active():
        return t
    t = t.detach().clone()
    td.all_reduce(t, op=td.ReduceOp.MAX)
    return t


@torch.no_grad()
def gather(t: torch.Tensor) -> torch.Tensor:
    """Concatenate ``t`` from every rank along dim 0, in rank order; no gradient."""
    if not active():
        return t
    parts = [torch.empty_like(t) for _ in range(world())]
    td.all_gather(parts, t.contiguous())
    return torch.cat(parts)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient for this rank's slice:
    the gradient of sum_r L_r with respect to the local input."""

    @staticmethod
    def forward(ctx, t):
        ctx.n = t.shape[0]
        parts = [torch.empty_like(t) for _ in range(td.get_world_size())]
        td.all_gather(parts, t.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        td.all_reduce(grad)
        r = td.get_rank()
        return grad[r * ctx.n:(r + 1) * ctx.n]


def gather_with_grad(t: torch.Tensor) -> torch.Tensor:
    return _GatherWithGrad.apply(t) if active() else t


class _SumWithGrad(torch.autograd.Function):
    """all_reduce(SUM) whose backward is all_reduce(SUM) of the gradient."""

    @staticmethod
    def forward(ctx, t):
        t = t.contiguous().clone()
        td.all_reduce(t)
        return t

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        td.all_reduce(grad)
        return grad


def sum_with_grad(t: torch.Tensor) -> torch.Tensor:
    return _SumWithGrad.apply(t) if active() else t
