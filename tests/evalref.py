"""Naive references for the evaluation probes (trainer/probes/), for tests that
check an evaluation's figures: written from each probe's documented protocol in
float64 numpy/scipy, sharing no code with the probes, slow and obvious."""

from pathlib import Path

import numpy as np
import torch
from scipy.optimize import minimize


def cached_splits(run_dir) -> dict[str, dict]:
    """The features the evaluator cached in RUN/eval/features, by the split's path."""
    out = {}
    for f in Path(run_dir, "eval", "features").glob("*.pt"):
        saved = torch.load(f, map_location="cpu", weights_only=True)
        out[str(Path(saved["data"]).resolve())] = saved
    return out


def names(split: dict, labeling: str) -> list[str | None]:
    """Each sample's name under ``labeling``: its class name ("class"), or the value
    of one factor of ``key=value,...`` class names; None for an unlabelled sample."""
    out = []
    for label in split["labels"].tolist():
        if label < 0:
            out.append(None)
            continue
        cls = split["classes"][label]
        out.append(cls if labeling == "class" else
                   dict(kv.split("=", 1) for kv in cls.split(","))[labeling])
    return out


def unit(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def vocabulary(split: dict, labeling: str) -> list[str]:
    """The names a split knows under ``labeling``, in its numbering: its class list
    (empty class folders included), or a factor's values sorted."""
    if labeling == "class":
        return list(split["classes"])
    return sorted({dict(kv.split("=", 1) for kv in c.split(","))[labeling]
                   for c in split["classes"]})


# Within these, float32 (the evaluator's) and float64 (here) may rank two train
# samples, or two votes, either way: such a test sample counts as too close to call.
# Measured on the tests' random-backbone features: float32 cosines within 5.5e-7 of
# float64, so two neighbours closer than twice that may swap; a vote exp(cos / T)
# carries that error / T (7.9e-6 relative at T = 0.07), two votes twice that.
SIM_TIE, VOTE_TIE = 2e-6, 3e-5


def knn_top1(train: dict, test: dict, labeling: str, k: int,
             temperature: float) -> tuple[float, float]:
    """Weighted cosine kNN by brute force, one test sample at a time: the k most
    similar labelled train samples each vote exp(cos / T) for their name; test
    samples whose name train does not know are left out; a tied vote goes to the
    name train numbers first. Returns (top-1, the share of scored test samples too
    close to call: a near tie at the k-th neighbour or between the two best votes)."""
    tr, te = names(train, labeling), names(test, labeling)
    keep = [i for i, n in enumerate(tr) if n is not None]  # labelled train samples
    a, b = unit(train["feats"])[keep], unit(test["feats"])
    tr = [tr[i] for i in keep]
    order = vocabulary(train, labeling)
    hits = seen = close = 0
    for q, want in zip(b, te):
        if want is None or want not in order:
            continue
        sims = np.array([a[i] @ q for i in range(len(a))])
        ranked = np.argsort(-sims, kind="stable")
        votes: dict[str, float] = {}
        for i in ranked[:k]:
            votes[tr[i]] = votes.get(tr[i], 0.0) + np.exp(sims[i] / temperature)
        got = max(votes, key=lambda n: (votes[n], -order.index(n)))
        top = sorted(votes.values(), reverse=True)
        close += bool((k < len(a) and sims[ranked[k - 1]] - sims[ranked[k]] < SIM_TIE)
                      or (len(top) > 1 and top[0] - top[1] < VOTE_TIE * top[0]))
        hits, seen = hits + (got == want), seen + 1
    return hits / seen, close / seen


def logistic_predict(sx, sy, qx, ways: int, l2: float) -> np.ndarray:
    """Multinomial logistic regression, minimising mean cross-entropy over the
    support + l2 * ||W||^2 (bias free), by scipy's L-BFGS-B in float64; the
    logits of each query row."""
    n, f = sx.shape
    onehot = np.eye(ways)[sy]

    def objective(theta):
        w, b = theta[:ways * f].reshape(ways, f), theta[ways * f:]
        z = sx @ w.T + b
        z = z - z.max(1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(1, keepdims=True)
        ce = -(np.log(p[np.arange(n), sy])).mean()
        g = (p - onehot) / n
        return (ce + l2 * (w ** 2).sum(),
                np.concatenate([(g.T @ sx + 2 * l2 * w).ravel(), g.sum(0)]))

    res = minimize(objective, np.zeros(ways * f + ways), jac=True, method="L-BFGS-B",
                   options={"maxiter": 5000, "gtol": 1e-10, "ftol": 1e-15})
    w, b = res.x[:ways * f].reshape(ways, f), res.x[ways * f:]
    return qx @ w.T + b


def ridge_r2(train_x, train_t, test_x, test_t, l2: float) -> tuple[float, list]:
    """Closed-form ridge from standardised features (train mean, population std; a
    constant feature -> 0), unpenalised intercept, objective
    (1/N) ||X W + b - T||^2 + l2 ||W||^2: (Xc^T Xc + N l2 I) W = Xc^T Tc. Returns the
    test R^2 pooled over the target columns (1 - sum SSE / sum SST) and per column
    (None for a column constant on test)."""
    x = np.asarray(train_x, np.float64)
    mean, std = x.mean(0), x.std(0)
    std[std == 0] = 1.0
    x, xt = (x - mean) / std, (np.asarray(test_x, np.float64) - mean) / std
    t = np.asarray(train_t, np.float64).reshape(len(x), -1)
    tt = np.asarray(test_t, np.float64).reshape(len(xt), -1)
    xc, tc = x - x.mean(0), t - t.mean(0)
    w = np.linalg.solve(xc.T @ xc + len(x) * l2 * np.eye(x.shape[1]), xc.T @ tc)
    pred = (xt - x.mean(0)) @ w + t.mean(0)
    sse, sst = ((pred - tt) ** 2).sum(0), ((tt - tt.mean(0)) ** 2).sum(0)
    per = [None if s < 1e-12 else float(1 - e / s) for e, s in zip(sse, sst)]
    return float(1 - sse.sum() / sst.sum()), per

