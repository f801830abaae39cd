"""Ridge-regression probe: how linearly do frozen features encode continuous targets
(e.g. the augmentation parameters an AugSelf-style head is asked to predict)?

Protocol (the regression analogue of the linear probe in ``linear.py``; a
standard ridge read-out, cf. Hastie et al., ESL Sec. 3.4.1): standardise the
features with the training mean/std, fit ridge regression with an unpenalised
intercept in closed form, choose the strength on a random validation split of
train by pooled validation R^2 (ties go to the larger l2), refit on all of
train, report R^2 on test.

Objective: (1/N) * ||X W + 1 b - T||^2 + l2 * ||W||^2, i.e. the normal equations
use N * l2 on the diagonal, so one grid suits any N. The intercept is handled by
centring X and T on the fit set. Solved in float64 through the (F x F) primal
system or the (N x N) dual system, whichever is smaller (same solution).

R^2 = 1 - SSE / SST with SST around the test mean: 1 is perfect, 0 is as good as
predicting the test mean, negative is worse. "Pooled" sums SSE and SST over all
target columns before dividing.
"""

from __future__ import annotations

import torch

from .linear import standardise


def _fit(x: torch.Tensor, t: torch.Tensor, l2: float):
    """Closed-form ridge on float64 x (N, F), t (N, D); returns (W, x_mean, t_mean)."""
    mx, mt = x.mean(0), t.mean(0)
    xc, tc = x - mx, t - mt
    n, f = xc.shape
    lam = n * l2
    if f <= n:  # primal: (X^T X + lam I) W = X^T T
        a = xc.T @ xc + lam * torch.eye(f, dtype=x.dtype, device=x.device)
        w = torch.linalg.solve(a, xc.T @ tc)
    else:  # dual: W = X^T (X X^T + lam I)^-1 T
        a = xc @ xc.T + lam * torch.eye(n, dtype=x.dtype, device=x.device)
        w = xc.T @ torch.linalg.solve(a, tc)
    return w, mx, mt


def _predict(fit, x: torch.Tensor) -> torch.Tensor:
    w, mx, mt = fit
    return (x - mx) @ w + mt


def _r2(pred: torch.Tensor, t: torch.Tensor):
    """(pooled R^2 or NaN, per-column R^2 with None for a constant column)."""
    sse = (pred - t).pow(2).sum(0)
    mean = t.mean(0)
    sst = (t - mean).pow(2).sum(0)
    # "zero variance" up to float64 rounding of a constant column's mean
    const = sst <= t.shape[0] * (1e-12 * (1 + mean.abs())) ** 2
    per = [None if c else float(1 - e / s) for e, s, c in zip(sse, sst, const)]
    sst_total = float(sst[~const].sum())
    pooled = 1 - float(sse.sum()) / sst_total if sst_total > 0 else float("nan")
    return pooled, per


def _random_split(n: int, val_fraction: float, seed: int):
    gen = torch.Generator().manual_seed(seed)  # CPU generator: split independent of device
    perm = torch.randperm(n, generator=gen)
    n_val = min(max(1, round(n * val_fraction)), n - 2)
    if n_val < 1:
        raise ValueError(f"too few train samples ({n}) to carve a validation split")
    return perm[n_val:], perm[:n_val]


def ridge_r2(train_x: torch.Tensor, train_t: torch.Tensor, test_x: torch.Tensor,
             test_t: torch.Tensor, *, l2_grid=None, val_fraction: float = 0.2,
             seed: int = 0) -> dict:
    """{"r2": pooled test R^2, "r2_per_target": [R^2 or None per column], "l2": chosen}."""
    device = train_x.device
    train_x, test_x = (v.to(torch.float64) for v in standardise(train_x, test_x.to(device)))
    train_t = train_t.to(device=device, dtype=torch.float64)
    test_t = test_t.to(device=device, dtype=torch.float64)
    if train_t.dim() == 1:
        train_t, test_t = train_t.unsqueeze(1), test_t.unsqueeze(1)
    # Centre targets by the train mean (R^2 is shift-invariant; this keeps the
    # intercept small and the float64 solve well scaled).
    t_mean = train_t.mean(0)
    train_t, test_t = train_t - t_mean, test_t - t_mean
    if l2_grid is None:
        l2_grid = torch.logspace(-6, 3, 10, dtype=torch.float64)  # 1e-6 .. 1e3
    grid = sorted(float(v) for v in l2_grid)

    fit_idx, val_idx = (i.to(device) for i in _random_split(train_x.shape[0], val_fraction,
                                                            seed))
    best_l2, best_r2 = grid[0], -float("inf")
    for l2 in grid:  # ascending with ">=": ties keep the larger l2
        fit = _fit(train_x[fit_idx], train_t[fit_idx], l2)
        r2, _ = _r2(_predict(fit, train_x[val_idx]), train_t[val_idx])
        if r2 == r2 and r2 >= best_r2:  # r2 == r2 skips NaN (constant val targets)
            best_l2, best_r2 = l2, r2

    fit = _fit(train_x, train_t, best_l2)
    r2, per = _r2(_predict(fit, test_x), test_t)
    return {"r2": r2, "r2_per_target": per, "l2": best_l2}
