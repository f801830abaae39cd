"""EquiMod (Devillers & Lefort, ICLR 2023): make a latent space equivariant
to the augmentations. An equivariant projector g maps backbone features to
y; an embedding of the augmentation parameters, concatenated to y_a, is mapped
by a predictor u to y^_b, which must identify y_b among the batch under an
InfoNCE (NT-Xent) loss (paper Sec. 3, Eq. 3-4).

Sizes and constants are their code's CIFAR-10 settings (github
ADevillers/EquiMod): g = 2048-2048-128 with a final BN without affine,
parameter embedding Linear(p, 128)-BN, predictor Linear(256, 128)-BN
(no affine), temperature 0.2, weight 1.

Two deliberate differences, both because our pipelines emit V augmented
views and no un-augmented one: (1) the reference is view a, not the original
image, so the parameter embedding sees both views' parameters [p_a, p_b] (the
original's case is p_a = identity); (2) the parameters are standardised by a
BatchNorm without affine instead of the fixed dataset mean/std their code
hard-codes. Both orders (a, b) = (1, 2) and (2, 1) are used.
"""

from __future__ import annotations

import torch
from torch import nn

from pipelines.params import WIDTH
from trainer import losses
from trainer.models import mlp


class EquiMod(nn.Module):
    def __init__(self, features: int, dim: int = 128, hidden: int = 2048,
                 temperature: float = 0.2, weight: float = 1.0):
        super().__init__()
        self.projector = mlp(features, hidden, dim, layers=3, last_bn=True, last_bn_affine=False)
        self.embed = nn.Sequential(nn.BatchNorm1d(2 * WIDTH, affine=False),
                                   nn.Linear(2 * WIDTH, dim, bias=False),
                                   nn.BatchNorm1d(dim))
        self.predictor = nn.Sequential(nn.Linear(2 * dim, dim, bias=False),
                                       nn.BatchNorm1d(dim, affine=False))
        self.temperature, self.weight = temperature, weight

    def forward(self, feats: list[torch.Tensor], batch) -> dict[str, torch.Tensor]:
        y1, y2 = self.projector(feats[0]), self.projector(feats[1])
        p1, p2 = batch.row[:, 0], batch.row[:, 1]  # (B, WIDTH) each: views of the row
        pairs = torch.cat([torch.cat([p1, p2], 1), torch.cat([p2, p1], 1)], 0)
        # Parameters are float32 (the Batch contract), the embedding's weights too
        # but in an fp64 reference run: take the weights' dtype.
        t = self.embed(pairs.to(self.embed[1].weight.dtype))
        y_hat = self.predictor(torch.cat([torch.cat([y1, y2], 0), t.to(y1.dtype)], 1))
        loss = losses.nt_xent(torch.cat([y2, y1], 0), y_hat, self.temperature)
        return {"loss": self.weight * loss, "equimod": loss.detach()}
