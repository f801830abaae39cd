"""AugSelf (Lee et al., NeurIPS 2021): predict the *difference* of the
augmentation parameters of two views from their backbone features.

The objective is a table: one Row per parameter (field, width, loss, weight,
target). One head per row with a positive weight, Linear(2F, 512)-BN-ReLU-
Linear(512, 512)-BN-ReLU-Linear(512, k) on [f(v1), f(v2)], trained on both
orders (v1, v2) and (v2, v1) (paper Eq. 3 and Sec. 3; the reference code's
``load_ss_predictor`` and ``SSObjective``). Regression rows use MSE on
tanh(prediction); flip is same-or-not with BCE. It wraps any method: it only
reads ``feats`` of the first two views and ``batch.params``.

Targets from the raw parameters of the schema (pipelines/params.py), view a
minus view b:
- crop: (centre y, centre x, height, width), all relative to the source image.
  The centre is not mirrored for flipped views: flip has its own row (the
  reference code mirrors both centres with the first view's flip flag, a bug
  we do not reproduce).
- color: (b - 1)/Rb, (c - 1)/Rc, (s - 1)/Rs, hue/Rh, with R = hi - lo of each
  jitter range (torchvision's ranges: 0.8 for strength 0.4); a skipped jitter
  reports the identity and so encodes as 0.
- flip: 1 when both views were flipped or neither.
- blur: sigma_a - sigma_b (0 for a view without blur).
- gray, solarize: flag_a - flag_b (optional rows, off by default).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipelines.recipe import Recipe
from trainer.models import mlp

Target = Callable[[dict, int, int, Recipe], torch.Tensor]


def crop_code(crop: torch.Tensor) -> torch.Tensor:
    """(y0, x0, h, w) -> (centre y, centre x, h, w)."""
    return torch.cat([crop[..., :2] + crop[..., 2:] / 2, crop[..., 2:]], dim=-1)


def color_code(color: torch.Tensor, ranges: list[tuple[float, float]]) -> torch.Tensor:
    """(b, c, s, h) -> ((b-1)/Rb, (c-1)/Rc, (s-1)/Rs, h/Rh)."""
    width = torch.tensor([(hi - lo) or 1.0 for lo, hi in ranges], device=color.device)
    centre = torch.tensor([1.0, 1.0, 1.0, 0.0], device=color.device)
    return (color - centre) / width


def _crop(p, a, b, recipe):
    return crop_code(p["crop"][:, a]) - crop_code(p["crop"][:, b])


def _color(p, a, b, recipe):
    return (color_code(p["color"][:, a], recipe.views[a].color_ranges())
            - color_code(p["color"][:, b], recipe.views[b].color_ranges()))


def _same_flip(p, a, b, recipe):
    return (p["flip"][:, a] == p["flip"][:, b]).float()


def _difference(field):
    def target(p, a, b, recipe):
        return p[field][:, a] - p[field][:, b]
    return target


@dataclass(frozen=True)
class Row:
    field: str
    width: int
    loss: str        # "mse_tanh" or "bce"
    weight: float
    target: Target


def rows(weights: dict[str, float]) -> list[Row]:
    """The table with the given weights; rows with weight 0 are left out."""
    table = [Row("crop", 4, "mse_tanh", weights.get("crop", 0.0), _crop),
             Row("color", 4, "mse_tanh", weights.get("color", 0.0), _color),
             Row("flip", 1, "bce", weights.get("flip", 0.0), _same_flip),
             Row("blur", 1, "mse_tanh", weights.get("blur", 0.0), _difference("blur")),
             Row("gray", 1, "mse_tanh", weights.get("gray", 0.0), _difference("gray")),
             Row("solarize", 1, "mse_tanh", weights.get("solarize", 0.0),
                 _difference("solarize"))]
    unknown = set(weights) - {r.field for r in table}
    if unknown:
        raise ValueError(f"unknown AugSelf rows {sorted(unknown)}")
    return [r for r in table if r.weight > 0]


def targets(table: list[Row], params: dict, recipe: Recipe) -> dict[str, torch.Tensor]:
    """Per row: the targets of both orders stacked, (2B, width): (v1, v2) then (v2, v1)."""
    return {r.field: torch.cat([r.target(params, 0, 1, recipe), r.target(params, 1, 0, recipe)])
            for r in table}


class AugSelf(nn.Module):
    def __init__(self, features: int, table: list[Row], recipe: Recipe, hidden: int = 512):
        super().__init__()
        if not table:
            raise ValueError("AugSelf with every weight 0: nothing to predict")
        self.table, self.recipe = table, recipe
        self.heads = nn.ModuleDict({r.field: mlp(2 * features, hidden, r.width, layers=3,
                                                 last_bn=False) for r in table})

    def forward(self, feats: list[torch.Tensor], batch) -> dict[str, torch.Tensor]:
        f1, f2 = feats[0], feats[1]
        z = torch.cat([torch.cat([f1, f2], 1), torch.cat([f2, f1], 1)], 0)
        want = targets(self.table, batch.params, self.recipe)
        out, total = {}, 0.0
        for r in self.table:
            pred = self.heads[r.field](z).float()
            if r.loss == "bce":
                loss = F.binary_cross_entropy_with_logits(pred, want[r.field])
            else:
                loss = F.mse_loss(torch.tanh(pred), want[r.field])
            out[f"augself/{r.field}"] = loss.detach()
            total = total + r.weight * loss
        out["augself"] = total.detach()
        out["loss"] = total
        return out
