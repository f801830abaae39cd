"""E-SSL's rotation head (Dangovski et al., ICLR 2022, "Equivariant Contrastive
Learning", Sec. 3 and 4): besides the invariance objective, predict from one
view's backbone features which of the four-fold rotations (0, 90, 180, 270
degrees) was applied to it, with cross-entropy; the total is the method's loss
plus lambda times this one.

Facts carried over from their code (github rdangovs/essl, cifar10/main.py):
the rotated images are a third augmentation of each image at half the side
(16 px on CIFAR-10), with the first view's crop scale, flip and colour; the
predictor is Linear(F, 2048)-LayerNorm-ReLU-Linear(2048, 2048)-LayerNorm-
ReLU-Linear(2048, 4); lambda is 0.4 (their CIFAR-10 and ImageNet SimCLR
settings); the rotated images go through the backbone in one call.

Our difference: their code rotates one such view all four ways; here the
pipelines render ``views`` extra views (pipelines/recipe.with_rotated_views),
each its own crop, the j-th turned by (t + j) mod 4 quarter turns for a
per-sample uniform t, emitted as the ``rot`` parameter like every other (so the
labels are read from the Batch, not made up here). With the default of 4 views
each image is seen at every turn once, as theirs, and every batch holds the
four classes equally often.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainer import losses


class ESSL(nn.Module):
    """The rotation head on the views from ``first`` on (``extra_views`` of them):
    features in, cross-entropy against each view's emitted quarter turns."""

    def __init__(self, features: int, first: int, views: int, hidden: int = 2048,
                 weight: float = 0.4):
        super().__init__()
        self.first, self.extra_views, self.weight = first, views, weight
        self.predictor = nn.Sequential(
            nn.Linear(features, hidden), nn.LayerNorm(hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, 4))

    def forward(self, feats: list[torch.Tensor], batch, extra: torch.Tensor) -> dict:
        """``extra``: backbone features of the extra views, view after view
        ((views * B, F), one backbone call over all of them, as theirs)."""
        turns = batch.params["rot"][:, self.first:self.first + self.extra_views, 0]
        turns = turns.transpose(0, 1).reshape(-1).long()  # view-major, as ``extra``
        logits = self.predictor(extra)
        with torch.autocast(logits.device.type, enabled=False):
            loss = F.cross_entropy(losses.wide(logits), turns)
        acc = (logits.detach().argmax(1) == turns).float().mean()
        return {"loss": self.weight * loss, "essl": loss.detach(), "essl/acc": acc}
