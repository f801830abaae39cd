"""Linear probe on frozen features: L2-regularised multinomial logistic regression.

Protocol (AugSelf, Lee et al., NeurIPS 2021, Sec. 4 / appendix; their
``transfer_linear_eval.py``, itself after Kornblith et al., CVPR 2019): fit a
logistic regression on frozen features with full-batch L-BFGS, choose the
regularisation strength on a validation split carved from the training set,
refit on the whole training set with it, report test top-1 and mean per-class
accuracy (the metric used for Aircraft, Pets, Caltech101 and Flowers).

Differences from the reference script, on purpose:
  * features are standardised with the training mean/std, so one l2 grid fits
    backbones whose feature scales differ;
  * the loss is the *mean* cross-entropy plus ``l2 * ||W||^2`` (the reference
    sums the loss and also penalises the bias), so l2 does not scale with N;
  * 7 grid values 1e-6..1e0 by default (the reference sweeps 45 over 1e-6..1e5)
    and a capped number of L-BFGS iterations, to stay cheap inside training.

Everything is deterministic given ``seed``; tensors stay on the input device.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F


def as_labels(y, device) -> torch.Tensor:
    """Integer labels (torch tensor, numpy array or sequence) as a 1-D long tensor on
    ``device``."""
    if isinstance(y, np.ndarray):
        y = torch.from_numpy(np.ascontiguousarray(y))
    elif not isinstance(y, torch.Tensor):
        y = torch.as_tensor(y)
    return y.to(device=device, dtype=torch.long).reshape(-1)


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    # float64 stays float64; everything else (half, bfloat16, float32) solves in float32.
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def standardise(train_x: torch.Tensor, *others: torch.Tensor):
    """Subtract the train mean and divide by the train std (population std) from
    every tensor; a constant feature gets std 1, so it becomes 0 rather than NaN."""
    dt = _work_dtype(train_x)
    train_x = train_x.to(dt)
    mean = train_x.mean(0)
    std = train_x.std(0, unbiased=False)
    std = torch.where(std > 0, std, torch.ones_like(std))
    out = [(train_x - mean) / std] + [(o.to(dt) - mean) / std for o in others]
    return out


def stratified_split(y: torch.Tensor, val_fraction: float, seed: int):
    """Random split of indices 0..N-1 into (fit, val), taking round(val_fraction * n_c)
    of each class c into val but always leaving one sample of it in fit.

    Vectorised: draw a random key per sample (CPU generator, so the split does not
    depend on the device), order samples by (label, key) and send the first
    n_val[c] of each class to val."""
    y_cpu = y.detach().cpu()
    n = y_cpu.numel()
    gen = torch.Generator().manual_seed(seed)
    keys = torch.rand(n, generator=gen)
    order = torch.argsort(keys)
    order = order[torch.argsort(y_cpu[order], stable=True)]
    _, counts = torch.unique(y_cpu, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    n_val = torch.minimum(torch.round(counts.double() * val_fraction).long(), counts - 1)
    cls_pos = torch.repeat_interleave(torch.arange(counts.numel()), counts)
    rank = torch.arange(n) - starts[cls_pos]  # position within its class
    is_val = torch.zeros(n, dtype=torch.bool)
    is_val[order] = rank < n_val[cls_pos]
    if not is_val.any():
        raise ValueError(
            f"validation split is empty (val_fraction={val_fraction}, {n} train samples): too "
            "few samples per class to hold any out; a larger train split is needed")
    idx = torch.arange(n)
    return idx[~is_val].to(y.device), idx[is_val].to(y.device)


@contextlib.contextmanager
def no_denormals(device):
    """Flush denormal floats to zero on CPU while fitting. With a weak penalty on
    (near-)separable data the weights grow, softmax probabilities underflow into
    the denormal range, and x86 arithmetic on denormals is ~30x slower (measured:
    1.8 s vs 0.08 s for a 2000 x 20, 5-class fit). Their contribution to loss and
    gradient is below float32 resolution anyway. torch has no getter for this
    flag, so on exit it is set back to torch's default (off)."""
    on_cpu = torch.device(device).type == "cpu"
    if on_cpu:
        torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if on_cpu:
            torch.set_flush_denormal(False)


def fit_logistic(x: torch.Tensor, y, classes: int, l2: float, iters: int = 100, init=None):
    """Multinomial logistic regression: minimise mean CE + l2 * ||W||^2 (bias not
    penalised) with full-batch L-BFGS (strong Wolfe line search, history 20, at
    most ``iters`` iterations, stopping when the largest gradient entry is below
    1e-6), from zero or from ``init`` = (W, b) (a warm start: the sweep passes the
    solution at the next stronger l2, which is close and converges in a few
    iterations). Returns (W (classes, F), b (classes,)) in float32, or float64
    when ``x`` is float64."""
    dt = _work_dtype(x)
    x = x.detach().to(dt)
    y = as_labels(y, x.device)
    if init is None:
        w = torch.zeros(classes, x.shape[1], dtype=dt, device=x.device)
        b = torch.zeros(classes, dtype=dt, device=x.device)
    else:
        w, b = (t.detach().to(dt).clone() for t in init)
    w.requires_grad_(True)
    b.requires_grad_(True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=iters, history_size=20,
                            line_search_fn="strong_wolfe",
                            tolerance_grad=1e-6, tolerance_change=1e-10)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w.T + b, y) + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad(), no_denormals(x.device):
        opt.step(closure)
    return w.detach(), b.detach()


def predict(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (x.to(w.dtype) @ w.T + b).argmax(1)


def mean_class_accuracy(pred, y) -> float:
    """Mean over the classes present in ``y`` of per-class recall
    (fraction of that class's samples predicted as it)."""
    y = as_labels(y, "cpu")
    pred = as_labels(pred, "cpu")
    classes = torch.unique(y)
    recalls = [(pred[y == c] == c).double().mean() for c in classes]
    return float(torch.stack(recalls).mean())


def linear_probe(train_x, train_y, test_x, test_y, *, l2_grid=None, val_fraction=0.2,
                 seed=0, iters=100) -> dict:
    """Standardise, sweep l2 on a stratified validation split of train, refit on all
    of train with the best (ties go to the larger l2: the simpler model), evaluate.

    Returns {"top1", "mean_class_acc", "l2", "val_top1": {str(l2): acc}} on test,
    accuracies as fractions in [0, 1]."""
    device = train_x.device
    train_y = as_labels(train_y, device)
    test_y = as_labels(test_y, device)
    classes = int(max(train_y.max(), test_y.max())) + 1
    train_x, test_x = standardise(train_x, test_x.to(device))
    if l2_grid is None:
        l2_grid = torch.logspace(-6, 0, 7, dtype=torch.float64)  # 1e-6 .. 1e0
    grid = sorted(float(v) for v in l2_grid)

    fit_idx, val_idx = stratified_split(train_y, val_fraction, seed)
    val_top1, best_l2, best_acc, best_fit, fit = {}, grid[-1], -1.0, None, None
    for l2 in reversed(grid):  # strong to weak, each warm-started from the last; ">"
        fit = fit_logistic(train_x[fit_idx], train_y[fit_idx], classes, l2, iters, init=fit)
        acc = float((predict(*fit, train_x[val_idx]) == train_y[val_idx]).double().mean())
        val_top1[str(l2)] = acc
        if acc > best_acc:  # so a tie keeps the larger l2
            best_l2, best_acc, best_fit = l2, acc, fit

    w, b = fit_logistic(train_x, train_y, classes, best_l2, iters, init=best_fit)
    pred = predict(w, b, test_x)
    return {
        "top1": float((pred == test_y).double().mean()),
        "mean_class_acc": mean_class_accuracy(pred, test_y),
        "l2": best_l2,
        "val_top1": val_top1,
    }
