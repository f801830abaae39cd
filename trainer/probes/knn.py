"""Weighted k-nearest-neighbour probe on frozen features.

Protocol (Wu et al., "Unsupervised Feature Learning via Non-Parametric Instance
Discrimination", CVPR 2018, Sec. 3.4; the default k=20 and T=0.07 are the
values used there and in most SSL kNN monitors since, e.g. DINO, solo-learn):
L2-normalise train and test features, take the k train features with the
highest cosine similarity s_i to a test feature, give each a vote exp(s_i / T)
for its class, predict the class with the largest summed vote.

Deterministic (no randomness); ties in the vote go to the lowest class id.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .linear import as_labels


def knn_predict(train_x: torch.Tensor, train_y, test_x: torch.Tensor, k: int = 20,
                temperature: float = 0.07, chunk: int = 1000) -> torch.Tensor:
    """Predicted labels (long tensor on the features' device) for each test row."""
    device = train_x.device
    train_y = as_labels(train_y, device)
    classes = int(train_y.max()) + 1
    k = min(k, train_x.shape[0])
    dt = torch.float64 if train_x.dtype == torch.float64 else torch.float32
    train_n = F.normalize(train_x.to(dt), dim=1)
    test_n = F.normalize(test_x.to(device=device, dtype=dt), dim=1)
    preds = []
    # Chunks of test rows bound the (chunk x N_train) similarity matrix in memory.
    for start in range(0, test_n.shape[0], chunk):
        sim = test_n[start:start + chunk] @ train_n.T  # cosine similarity in [-1, 1]
        top_sim, top_idx = sim.topk(k, dim=1)
        # exp(s / T) <= exp(1 / 0.07) ~ 1.6e6: no overflow in float32 for T >= ~0.012;
        # subtracting the row max keeps it safe for any T and leaves the argmax unchanged.
        weights = torch.exp((top_sim - top_sim[:, :1]) / temperature)
        votes = torch.zeros(top_sim.shape[0], classes, dtype=dt, device=device)
        votes.scatter_add_(1, train_y[top_idx], weights)
        preds.append(votes.argmax(1))
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long, device=device)


def knn_probe(train_x: torch.Tensor, train_y, test_x: torch.Tensor, test_y, k: int = 20,
              temperature: float = 0.07, chunk: int = 1000) -> dict:
    """Weighted cosine kNN accuracy: {"top1": fraction of test rows classified right}."""
    pred = knn_predict(train_x, train_y, test_x, k, temperature, chunk)
    test_y = as_labels(test_y, pred.device)
    return {"top1": float((pred == test_y).double().mean())}
