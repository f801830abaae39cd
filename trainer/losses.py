"""The SSL losses as pure functions of tensors (each tested against a naive
loop in tests/test_losses.py). Cross-rank pieces (gathering negatives,
Sinkhorn's sums) go through ``trainer.dist``, which is the identity in a single
process, so a 2-rank run computes what one process computes on the global batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trainer import dist


def wide(x: torch.Tensor) -> torch.Tensor:
    """At least float32: bf16/fp16 activations are widened for the loss's sums, and
    an fp64 run (--precision fp64, the reference for numerical checks) stays fp64
    (a plain .float() made its SwAV, SimCLR, Barlow, VICReg and E-SSL losses
    float32: the two-rank SwAV check found 5e-7 where fp64 gives 1e-16)."""
    return x if x.dtype == torch.float64 else x.float()


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
    z1, z2 = F.normalize(wide(z1), dim=-1), F.normalize(wide(z2), dim=-1)
    g1, g2 = dist.gather_with_grad(z1), dist.gather_with_grad(z2)
    keys = torch.cat([g1, g2])                              # (2N, d): all views, global
    n, big_n = len(z1), len(g1)
    off = dist.rank() * n                                  # where this rank's rows sit
    anchors = torch.cat([z1, z2])                           # (2n, d)
    logits = anchors @ keys.t() / temperature               # (2n, 2N)
    rows = torch.arange(2 * n, device=z1.device)
    own = torch.cat([off + rows[:n], big_n + off + rows[:n]])      # self column
    pos = torch.cat([big_n + off + rows[:n], off + rows[:n]])      # pair column
    # scatter, not masked_fill(one_hot(own)): one_hot checks its classes with two
    # host reads (.item()) on a CPU device (tests/test_sync_count.py)
    logits = logits.scatter(1, own.unsqueeze(1), float("-inf"))
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
    s = wide(scores) / epsilon
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
        terms = [-(q * F.log_softmax(wide(s) / temperature, dim=1)).sum(1).mean()
                 for v, s in enumerate(scores) if v != i]
        total = total + sum(terms) / len(terms)
    return total


def _global_count(z: torch.Tensor) -> torch.Tensor:
    return dist.all_reduce_sum(torch.full((), float(len(z)), device=z.device))


def _standardise(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Each column to zero mean and unit variance over the *global* batch (biased
    variance, as BatchNorm1d(affine=False) in training mode, which Barlow Twins'
    reference code applies); the statistics carry gradient across ranks."""
    n = _global_count(z)
    mean = dist.sum_with_grad(z.sum(0)) / n
    var = dist.sum_with_grad(((z - mean) ** 2).sum(0)) / n
    return (z - mean) / torch.sqrt(var + eps)


def barlow_twins(z1: torch.Tensor, z2: torch.Tensor, lambd: float) -> torch.Tensor:
    """Barlow Twins (Zbontar et al. 2021, Eq. 1): C = Z1'^T Z2' / N, the
    cross-correlation of the batch-standardised embeddings over the global
    batch; loss = sum_i (1 - C_ii)^2 + lambda sum_{i != j} C_ij^2."""
    z1, z2 = wide(z1), wide(z2)
    c = dist.sum_with_grad(_standardise(z1).t() @ _standardise(z2)) / _global_count(z1)
    diag = torch.diagonal(c)
    return (1 - diag).pow(2).sum() + lambd * (c.pow(2).sum() - diag.pow(2).sum())


def _variance_term(z: torch.Tensor, gamma: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    # VICReg Eq. 1: hinge on the standard deviation of each dimension (unbiased)
    std = torch.sqrt(z.var(dim=0) + eps)
    return F.relu(gamma - std).mean()


def _covariance_term(z: torch.Tensor) -> torch.Tensor:
    # VICReg Eq. 3-4: off-diagonal squared covariances, summed, divided by d
    n, d = z.shape
    zc = z - z.mean(0)
    cov = zc.t() @ zc / (n - 1)
    return (cov.pow(2).sum() - torch.diagonal(cov).pow(2).sum()) / d


def vicreg(z1: torch.Tensor, z2: torch.Tensor, sim: float, var: float,
           cov: float) -> torch.Tensor:
    """VICReg (Bardes et al. 2022, Eq. 6): sim * MSE(Z, Z') + var * (v(Z) + v(Z'))
    + cov * (c(Z) + c(Z')), with every term over the *global* batch (the
    embeddings of all ranks gathered with gradient, as the reference code does);
    the paper's coefficients are 25, 25, 1."""
    z1, z2 = dist.gather_with_grad(wide(z1)), dist.gather_with_grad(wide(z2))
    return (sim * F.mse_loss(z1, z2) + var * (_variance_term(z1) + _variance_term(z2))
            + cov * (_covariance_term(z1) + _covariance_term(z2)))
