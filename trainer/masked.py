"""State changes applied or dropped on the device, by a 0-dim bool ``ok``.

A step whose loss is not finite must leave every weight, buffer and optimiser
state as it was (trainer/step.py); finding that out on the host (``.item()``)
would stop the host from queueing the next step's kernels until the GPU has
caught up. So every change a step makes is computed as usual and then selected:
``dst = where(ok, new, dst)``. Always ``where``, never ``dst + ok * (new - dst)``:
the new values of a bad step may be NaN, and NaN * 0 is NaN.

Weights and optimiser state (``assign``) get one ``where`` per tensor, in
place, no copy. BN statistics (``Kept``) are many small tensors (327 on BYOL's
two ResNet-50s): their snapshot and selection are done per dtype and device
group at once, one concatenation, one ``where`` and one multi-tensor copy back,
instead of a launch or two per tensor.
"""

from __future__ import annotations

import torch


def _groups(tensors: list[torch.Tensor]) -> list[list[int]]:
    """Indices of ``tensors`` grouped by (device, dtype), in order."""
    by: dict[tuple, list[int]] = {}
    for i, t in enumerate(tensors):
        by.setdefault((t.device, t.dtype), []).append(i)
    return list(by.values())


def _flat(tensors) -> torch.Tensor:
    # 1-D tensors (BN statistics, biases) as they are: a reshape is an op to dispatch
    return torch.cat([t if t.dim() == 1 else t.reshape(-1) for t in tensors])


def _put(ok: torch.Tensor, dsts: list[torch.Tensor], new: torch.Tensor,
         old: torch.Tensor) -> None:
    """dsts <- where(ok, new, old), ``new`` and ``old`` flat concatenations of dsts' shapes."""
    torch.where(ok, new, old, out=new)
    parts = new.split([d.numel() for d in dsts])
    torch._foreach_copy_(dsts, [p if d.dim() == 1 else p.view(d.shape)
                                for p, d in zip(parts, dsts)])


@torch.no_grad()
def assign(ok: torch.Tensor, dsts: list[torch.Tensor], news: list[torch.Tensor]) -> None:
    """dst <- new for every pair when ``ok``, else nothing changes (bit for bit).
    One ``where`` per tensor, written in place: for weights and their optimiser
    state, whose concatenation would be a copy of the whole model each step (on
    a CPU, fresh pages for ~100 MB at ResNet-50 size: 10x the update itself)."""
    for d, n in zip(dsts, news):
        torch.where(ok, n, d, out=d)


class Kept:
    """The values of some tensors now, to put back later unless ``ok``: for the
    state a forward pass changes in place (BN running statistics)."""

    @torch.no_grad()
    def __init__(self, tensors: list[torch.Tensor]):
        self.groups = [[tensors[i] for i in idx] for idx in _groups(tensors)]
        self.values = [_flat(g) for g in self.groups]

    @torch.no_grad()
    def restore_unless(self, ok: torch.Tensor) -> None:
        for g, old in zip(self.groups, self.values):
            _put(ok, g, _flat(g), old)
