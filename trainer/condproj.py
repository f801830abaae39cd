"""A projector conditioned on the augmentation parameters (``--aux condproj``),
after CASSLE (Przewięźlikowski et al. 2024): instead of predicting the
parameters (AugSelf) or making the latent space equivariant to them (EquiMod),
the projector is told them. An augmentation encoder embeds each view's
parameters; the embedding is concatenated to the backbone's features and the
projector maps both. The backbone can then keep what the augmentations change:
the projector, knowing the change, can still make the two views agree.

Composed around any method with a projector: ``install(method)`` widens the
first layer of the method's projector and wraps it (with the encoder) in a
``Conditioned`` module; a method's target projector (BYOL, MoCo) becomes a copy
of the wrapped online one, so the momentum update covers the encoder too.
Every projector is called alike, ``projector(f, row)`` with view v's parameter
row (methods.Method.project): a plain one (methods.Projector) ignores the row,
a ``Conditioned`` one reads it, so the method needs no test of which it holds.

Sizes: the encoder is BN(W, no affine) standardising the W = params.WIDTH
schema values (13: rotation included; as EquiMod's embedding does), then
Linear(W, 64)-ReLU-Linear(64, 64); CASSLE's
own sizes differ per setting, this is a small default, ``emb_dim`` changes it.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from pipelines.params import WIDTH


class Conditioned(nn.Module):
    """projector(cat(features, encoder(row))): called as methods.Projector is."""

    def __init__(self, projector: nn.Sequential, emb_dim: int):
        super().__init__()
        first = projector[0]
        if not isinstance(first, nn.Linear):
            raise ValueError("condproj needs a projector that starts with a Linear layer")
        wide = nn.Linear(first.in_features + emb_dim, first.out_features,
                         bias=first.bias is not None)
        with torch.no_grad():  # the feature columns keep their initialisation
            bound = 1 / math.sqrt(wide.in_features)
            nn.init.uniform_(wide.weight, -bound, bound)
            wide.weight[:, :first.in_features].copy_(first.weight)
            if first.bias is not None:
                wide.bias.copy_(first.bias)
        projector[0] = wide
        self.projector = projector
        self.encoder = nn.Sequential(nn.BatchNorm1d(WIDTH, affine=False),
                                     nn.Linear(WIDTH, emb_dim), nn.ReLU(),
                                     nn.Linear(emb_dim, emb_dim))

    def forward(self, f: torch.Tensor, row: torch.Tensor) -> torch.Tensor:
        # row: (B, WIDTH) view v's parameters, float32 (the Batch contract); the
        # weights' dtype may not be
        e = self.encoder(row.to(self.encoder[1].weight.dtype))
        return self.projector(torch.cat([f, e.to(f.dtype)], dim=1))


def install(method: nn.Module, emb_dim: int = 64) -> None:
    """Condition ``method``'s projector (and its target copy, if any) on the
    views' parameters, in place."""
    if not isinstance(getattr(method, "projector", None), nn.Sequential):
        raise ValueError(f"--aux condproj needs a method with a projector; "
                         f"{type(method).__name__} has none")
    method.projector = Conditioned(method.projector, emb_dim)
    if hasattr(method, "target_projector"):
        method.target_projector = copy.deepcopy(method.projector).requires_grad_(False)
