"""RankMe: is the representation collapsing? Read at every logged line.

RankMe (Garrido et al., "RankMe: Assessing the downstream performance of
pretrained self-supervised representations by their rank", ICML 2023) is the
effective rank of a batch of embeddings: with sigma_k the singular values of the
(N, D) matrix of features, p_k = sigma_k / sum(sigma) + eps (eps 1e-7, the
paper's) and RankMe = exp(-sum_k p_k log p_k). It lies between 1 (every row on
one line: collapse) and min(N, D) (every direction used alike); a run whose
RankMe falls is collapsing, long before its loss or the final evaluation says so.

What it is computed on: the backbone features of the first view of the batch the
logged step trained on, as the step produced them (train mode: the BatchNorm of
the step), taken by a forward hook on the method (its output's ``feats``, which
every method returns). No second forward pass: at each step the hook keeps a
reference to that tensor (detached: no graph kept, no copy, no kernel); only at a
logged step (--log-every) are the singular values computed, in float64 outside
autocast, on the device (``rankme``). The value is a 0-dim device tensor that the
loop hands to the Tally's one read of the line (trainer/step.py:
``Tally.read(extra=...)``), so it adds no host read; under DDP each rank's value
is of its own share of the batch (B / ranks rows) and the line logs their mean.
Under --compile the hook is traced with the objective: one graph, no break, the
features one more output of it (tests/test_monitors.py).

Cost: per logged line, a Gram matrix (N^2 D multiply-adds, N = min(B / ranks, D))
and an N x N symmetric eigensolve; nothing between lines. CUDA's eigensolver
checks its convergence on the host, so the host waits there for the steps queued
before it: the wait the line's own tally read makes a moment later, not an extra
one.
"""

from __future__ import annotations

import torch

EPS = 1e-7  # Garrido et al.'s


def rankme(feats: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """RankMe of (N, D) features: a 0-dim float64 tensor on their device.

    The singular values are the square roots of the eigenvalues of the Gram matrix
    (X X^T, or X^T X when D < N), formed and solved in float64 with autocast off:
    a min(N, D)-sized symmetric eigensolve instead of an SVD of the whole matrix
    (2-13x faster than float32 ``svdvals`` at 64-256 x 512-2048 on 2 CPU cores), and
    more precise than a float32 SVD (the smallest singular values to ~1e-8 of the
    largest, against ~1e-7)."""
    x = feats.detach().flatten(1).double()
    with torch.autocast(x.device.type, enabled=False):
        gram = x @ x.T if x.shape[0] <= x.shape[1] else x.T @ x
        # A diverging run's features (NaN, inf, or squares past float64): NaN, which
        # the line writes as null, decided on the device (the solver would raise).
        finite = torch.isfinite(gram).all()
        s = torch.linalg.eigvalsh(torch.where(finite, gram, 0.0)).clamp(min=0).sqrt()
    p = s / s.sum().clamp(min=torch.finfo(s.dtype).tiny) + eps
    return torch.where(finite, torch.exp(-(p * p.log()).sum()), float("nan"))


class RankMe:
    """The hook on ``method`` (an SSL method of trainer/methods.py, whose output
    holds ``feats``: one (B, D) tensor per view) and the value at a logged line."""

    KEY = "rankme"

    def __init__(self, method: torch.nn.Module):
        self._feats: torch.Tensor | None = None
        self._handle = method.register_forward_hook(self._keep)

    def _keep(self, module, args, output) -> None:
        self._feats = output["feats"][0].detach()

    def line(self) -> dict[str, torch.Tensor]:
        """{"rankme": 0-dim device tensor} of the last step's features, for the
        line's tally read; {} when no step ran since the last line."""
        feats, self._feats = self._feats, None
        return {} if feats is None else {self.KEY: rankme(feats)}

    def remove(self) -> None:
        self._handle.remove()
