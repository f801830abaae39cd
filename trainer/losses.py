"""The SSL losses as pure functions of tensors (each tested against a naive
loop in tests/test_losses.py). Cross-rank pieces (gathering negatives,
Sinkhorn's sums) go through ``trainer.dist``, which is the identity in a single
process, so a 2-rank run computes what one process computes on the global batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trainer import dist


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """SimSiam (Chen & He 2021, Eq. 1): -cos(p, stopgrad(z)), mean over the batch."""
    return -F.cosine_similarity(p, z.detach(), dim=-1).mean()


def byol_regression(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL (Grill et al. 2020, Eq. 2): ||p/|p| - z/|z|||^2 = 2 - 2 cos(p, z), z a target."""
    return (2 - 2 * F.cosine_similarity(p, z.detach(), dim=-1)).mean()


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent (Chen et al. 2020, Eq. 1) over the 2N views of the *global*
    batch: each view's positive is its pair, its negatives all other 2N - 2 views.
    The mean is over this rank's 2n anchors; averaged over ranks by DDP it is the
    global mean. Used for EquiMod's equivariance loss too."""
    z1, z2 = F.normalize(z1.float(), dim=-1), F.normalize(z2.float(), dim=-1)
    g1, g2 = dist.gather_with_grad(z1), dist.gather_with_grad(z2)
    keys = torch.cat([g1, g2])                              # (2N, d): all views, global
    n, big_n = len(z1), len(g1)
    off = dist.rank() * n                                  # where this rank's rows sit
    anchors = torch.cat([z1, z2])                           # (2n, d)
    logits = anchors @ keys.t() / temperature               # (2n, 2N)
    rows = torch.arange(2 * n, device=z1.device)
    own = torch.cat([off + rows[:n], big_n + off + rows[:n]])      # self column
    pos = torch.cat([big_n + off + rows[:n], off + rows[:n]])      # pair column
    logits = logits.masked_fill(F.one_hot(own, 2 * big_n).bool(), float("-inf"))
    return F.cross_entropy(logits, pos)


def moco_infonce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor,
                 temperature: float) -> torch.Tensor:
    """MoCo (He et al. 2020, Eq. 1): positive q.k, negatives q.queue; q, k, queue
    L2-normalised (B, d), (B, d), (K, d); k is from the momentum encoder."""
    pos = (q * k.detach()).sum(-1, keepdim=True)
    neg = q @ queue.detach().t()
    logits = torch.cat([pos, neg], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, epsilon: float, iters: int) -> torch.Tensor:
    """SwAV's equal-partition codes (Caron et al. 2020, Sec. 3.1 and their
    distributed_sinkhorn): Q = exp(scores / eps), then alternately normalise the
    prototype rows to 1/K and the sample columns to 1/N over the *global* batch.
    scores (n, K) -> codes (n, K), each row summing to 1."""
    s = scores.float() / epsilon
    s = s - dist.all_reduce_max(s.max())            # same shift on every rank: exp cannot overflow
    q = torch.exp(s).t()                            # (K, n)
    # torch.full, not torch.tensor(.., device=cuda): a fill kernel, not a blocking copy
    k, n_global = q.shape[0], dist.all_reduce_sum(torch.full((), float(q.shape[1]),
                                                             device=q.device))
    q /= dist.all_reduce_sum(q.sum())
    for _ in range(iters):
        q /= dist.all_reduce_sum(q.sum(dim=1, keepdim=True)) * k
        q /= q.sum(dim=0, keepdim=True) * n_global
    return (q * n_global).t()


def swapped_prediction(codes: list[torch.Tensor], scores: list[torch.Tensor],
                       temperature: float) -> torch.Tensor:
    """SwAV's loss (Eq. 2-3, multi-crop): the code of assignment view i is predicted
    from every other view v: -sum_k q_i log softmax(s_v / T). Mean over pairs for
    each i, summed over the assignment views (with 2 views this is the AugSelf
    code's loss1 + loss2)."""
    total = 0.0
    for i, q in enumerate(codes):
        terms = [-(q * F.log_softmax(s.float() / temperature, dim=1)).sum(1).mean()
                 for v, s in enumerate(scores) if v != i]
        total = total + sum(terms) / len(terms)
    return total
