"""AugSelf (Lee et al., NeurIPS 2021): predict the *difference* of the
augmentation parameters of two views from their backbone features.

The objective is a table: one Row per parameter (field, width, loss, weight,
target). One head per row with a positive weight, Linear(2F, 512)-BN-ReLU-
Linear(512, 512)-BN-ReLU-Linear(512, k) on [f(v1), f(v2)], trained on both
orders (v1, v2) and (v2, v1) (paper Eq. 3 and Sec. 3; the reference code's
``load_ss_predictor`` and ``SSObjective``). Regression rows use MSE on
tanh(prediction); flip is same-or-not with BCE; rotation is a 4-way
classification of the difference of quarter turns mod 4 (cross-entropy), as
the paper treats its discrete rotation augmentation. It wraps any method: it only
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
- rot: (turns_a - turns_b) mod 4, one of four classes (optional, off by
  default; the views must rotate: a recipe with ``rotate: true``).

One batched head (issue 10: launch-light). Every row's code is affine in the
view's parameters, so all targets of both orders come from one matrix product
of the two views' flattened parameters (the per-row functions below stay the
definition, and a test holds the product to them). The R row heads run as one
module: their first layers side by side, the 512-wide hidden layers and the
outputs as block-diagonal matrices (a gradient mask keeps the blocks
independent: the same function and gradients as R separate heads, one matmul
per layer), and the losses are one elementwise pass with per-column weights.
Eager, a SimSiam step gains 39 kernel-launching ops with AugSelf (90 dispatched,
views included) where separate heads cost ~250 dispatched (counted on CPU,
tests/test_op_counts.py). One difference from separate heads: LARS computes its
trust ratio over the whole block-diagonal matrix, not per head.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipelines.params import OFFSETS, WIDTH, join
from pipelines.recipe import Recipe, ViewRecipe

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


def _turns_apart(p, a, b, recipe):
    """(turns_a - turns_b) mod 4 as a one-hot row of four classes."""
    d = torch.remainder(p["rot"][:, a] - p["rot"][:, b], 4.0)
    return (d == torch.arange(4.0, device=d.device)).float()


def _difference(field):
    def target(p, a, b, recipe):
        return p[field][:, a] - p[field][:, b]
    return target


@dataclass(frozen=True)
class Row:
    field: str
    width: int
    loss: str        # "mse_tanh", "bce" or "ce" (classes: one-hot targets, width logits)
    weight: float
    target: Target   # the definition: view a minus view b (or same-or-not, for bce)

    def __post_init__(self):
        # the head treats any kind but "bce" and "ce" as "mse_tanh": a misspelt kind
        # would silently train as a regression
        if self.loss not in ("mse_tanh", "bce", "ce"):
            raise ValueError(f"AugSelf row {self.field!r}: unknown loss {self.loss!r}")


def rows(weights: dict[str, float]) -> list[Row]:
    """The table with the given weights; rows with weight 0 are left out."""
    table = [Row("crop", 4, "mse_tanh", weights.get("crop", 0.0), _crop),
             Row("color", 4, "mse_tanh", weights.get("color", 0.0), _color),
             Row("flip", 1, "bce", weights.get("flip", 0.0), _same_flip),
             Row("blur", 1, "mse_tanh", weights.get("blur", 0.0), _difference("blur")),
             Row("gray", 1, "mse_tanh", weights.get("gray", 0.0), _difference("gray")),
             Row("solarize", 1, "mse_tanh", weights.get("solarize", 0.0),
                 _difference("solarize")),
             Row("rot", 4, "ce", weights.get("rot", 0.0), _turns_apart)]
    unknown = set(weights) - {r.field for r in table}
    if unknown:
        raise ValueError(f"unknown AugSelf rows {sorted(unknown)}")
    return [r for r in table if r.weight > 0]


def targets(table: list[Row], params: dict, recipe: Recipe) -> dict[str, torch.Tensor]:
    """Per row: the targets of both orders stacked, (2B, width): (v1, v2) then (v2, v1).
    The naive definition (one small op chain per row); AugSelf computes the same
    numbers as one product (code_map)."""
    return {r.field: torch.cat([r.target(params, 0, 1, recipe), r.target(params, 1, 0, recipe)])
            for r in table}


def _code(row: Row, vr: ViewRecipe) -> tuple[torch.Tensor, torch.Tensor]:
    """The row's code of one view as an affine map of its flattened parameters:
    code = p @ M + c, M (params.WIDTH, width), c (width,). A "ce" row's code is
    its value repeated in each class column; the difference of two views' codes
    becomes one-hot there (AugSelf.targets)."""
    M, c = torch.zeros(WIDTH, row.width), torch.zeros(row.width)
    o = OFFSETS[row.field]
    if row.field == "crop":  # (y0, x0, h, w) -> (y0 + h/2, x0 + w/2, h, w)
        for k in range(4):
            M[o + k, k] = 1.0
        M[o + 2, 0] = M[o + 3, 1] = 0.5
    elif row.field == "color":  # (f - centre) / (hi - lo)
        for k, ((lo, hi), centre) in enumerate(zip(vr.color_ranges(), (1.0, 1.0, 1.0, 0.0))):
            width = (hi - lo) or 1.0
            M[o + k, k], c[k] = 1.0 / width, -centre / width
    else:  # flip, blur, gray, solarize: the value itself (rot: in each class column)
        M[o, :] = 1.0
    return M, c


def code_map(table: list[Row], recipe: Recipe) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, c) with [p_v1, p_v2] @ M + c = every row's code(v1) - code(v2), side by
    side: M (24, sum of widths)."""
    parts = [[_code(r, recipe.views[v]) for r in table] for v in (0, 1)]
    M = torch.cat([torch.cat([m for m, _ in parts[0]], 1), -torch.cat([m for m, _ in parts[1]], 1)])
    c = torch.cat([c for _, c in parts[0]]) - torch.cat([c for _, c in parts[1]])
    return M, c


class _MaskGrad(torch.autograd.Function):
    """Identity forward (an alias: no kernel); backward multiplies the gradient by
    a fixed 0/1 mask. A function in the graph rather than a tensor hook, so that it
    survives deepcopy and state-dict loading."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(mask)
        return w.view_as(w)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        (mask,) = ctx.saved_tensors
        return g * mask, None


class RowHeads(nn.Module):
    """R heads Linear(n_in, H)-BN-ReLU-Linear(H, H)-BN-ReLU-Linear(H, k_r), the
    reference code's per-augmentation predictor, computed as one: layer 1 is
    the R first layers stacked, layers 2 and 3 block-diagonal, BN per channel as
    before. Initialised block by block like mlp(): U(+-1/sqrt(fan_in)).

    The off-block entries of w2 and w3 start at zero and _MaskGrad zeroes their
    gradient, so no optimiser we build moves them (the update of an entry
    whose weight, gradient and state are zero is zero: SGD with momentum and decay,
    LARS, AdamW). One multiply per weight in the backward pass, none in the forward."""

    def __init__(self, n_in: int, hidden: int, widths: list[int]):
        super().__init__()
        R, H, W = len(widths), hidden, sum(widths)
        self.lin1 = nn.Linear(n_in, R * H, bias=False)
        self.bn1 = nn.BatchNorm1d(R * H)
        self.w2 = nn.Parameter(torch.zeros(R * H, R * H))
        self.bn2 = nn.BatchNorm1d(R * H)
        self.w3 = nn.Parameter(torch.zeros(W, R * H))
        self.b3 = nn.Parameter(torch.zeros(W))
        m2, m3 = torch.zeros(R * H, R * H), torch.zeros(W, R * H)
        bound1, bound = 1 / math.sqrt(n_in), 1 / math.sqrt(H)
        nn.init.uniform_(self.lin1.weight, -bound1, bound1)
        with torch.no_grad():
            o = 0
            for r, w in enumerate(widths):
                blk = slice(r * H, (r + 1) * H)
                m2[blk, blk] = 1.0
                m3[o:o + w, blk] = 1.0
                self.w2[blk, blk].uniform_(-bound, bound)
                self.w3[o:o + w, blk].uniform_(-bound, bound)
                self.b3[o:o + w].uniform_(-bound, bound)
                o += w
        self.register_buffer("m2", m2, persistent=False)
        self.register_buffer("m3", m3, persistent=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        # the modules' own forward: SyncBN once converted under DDP
        h = F.relu(self.bn1(F.linear(z, self.lin1.weight)))
        h = F.relu(self.bn2(F.linear(h, _MaskGrad.apply(self.w2, self.m2))))
        return F.linear(h, _MaskGrad.apply(self.w3, self.m3), self.b3)


class AugSelf(nn.Module):
    """Rows of the pair (v1, v2) and (v2, v1) are interleaved: row 2i is sample i in
    the order (v1, v2), row 2i+1 in the order (v2, v1). One concatenation builds
    the head's input and one product builds every target of both orders."""

    def __init__(self, features: int, table: list[Row], recipe: Recipe, hidden: int = 512):
        super().__init__()
        if not table:
            raise ValueError("AugSelf with every weight 0: nothing to predict")
        self.table, self.recipe = table, recipe
        widths = [r.width for r in table]
        self.heads = RowHeads(2 * features, hidden, widths)
        M, c = code_map(table, recipe)
        same = torch.cat([torch.full((r.width,), float(r.loss == "bce")) for r in table])
        # per column: 1/width of its row (the row's mean; a "ce" row's columns sum
        # to its cross-entropy: weight 1), and row membership
        member = torch.zeros(sum(widths), len(table))
        o, self.ce_rows = 0, []
        for i, r in enumerate(table):
            member[o:o + r.width, i] = 1.0 if r.loss == "ce" else 1.0 / r.width
            if r.loss == "ce":
                self.ce_rows.append((o, o + r.width))
            o += r.width
        cls = torch.zeros(sum(widths))  # a "ce" column's class
        for a, b in self.ce_rows:
            cls[a:b] = torch.arange(b - a, dtype=torch.float32)
        weight = torch.tensor([float(r.weight) for r in table])
        self.has_bce = bool(same.any())
        # Built once, moved with the module: no host-to-device copy in the step.
        # [code(v1) - code(v2), code(v2) - code(v1)] = [p1, p2] @ [M, -M] + [c, -c]
        for name, t in (("code_m", torch.cat([M, -M], 1)), ("code_c", torch.cat([c, -c])),
                        ("same", same.bool()), ("member", member), ("cls", cls),
                        ("col_weight", member @ weight)):
            self.register_buffer(name, t, persistent=False)

    def targets(self, params: dict) -> torch.Tensor:
        """Every row's targets, both orders interleaved: (2B, sum of widths), rows
        side by side; row 2i is (v1, v2) of sample i, row 2i+1 is (v2, v1)."""
        p = join(params)[:, :2].reshape(-1, 2 * WIDTH)
        # parameters are float32 (the Batch contract), the buffers too but in an fp64 run
        d = torch.addmm(self.code_c, p.to(self.code_m.dtype), self.code_m)
        d = d.view(len(p) * 2, -1)
        if self.has_bce:                                      # same-or-not: 1 - |f1 - f2|
            d = torch.where(self.same, 1.0 - d.abs(), d)
        for a, b in self.ce_rows:                             # one-hot of the class mod k
            d = torch.cat([d[:, :a], (torch.remainder(d[:, a:b], b - a) == self.cls[a:b])
                           .to(d.dtype), d[:, b:]], 1)
        return d

    def forward(self, feats: list[torch.Tensor], batch) -> dict[str, torch.Tensor]:
        f1, f2 = feats[0], feats[1]
        z = torch.cat([f1, f2, f2, f1], 1).view(2 * len(f1), -1)
        pred = self.heads(z)
        # Targets and losses in fp32 (fp64 in an fp64 run) even under autocast, which
        # would run their matrix products in bf16 (3 significant digits).
        with torch.autocast(z.device.type, enabled=False):
            if pred.dtype in (torch.bfloat16, torch.float16):
                pred = pred.float()
            want = self.targets(batch.params)
            err = F.mse_loss(torch.tanh(pred), want, reduction="none")
            if self.has_bce:
                bce = F.binary_cross_entropy_with_logits(pred, want, reduction="none")
                err = torch.where(self.same, bce, err)
            for a, b in self.ce_rows:  # -log p(class) in the target's column, 0 elsewhere
                ce = -F.log_softmax(pred[:, a:b], dim=1) * want[:, a:b]
                err = torch.cat([err[:, :a], ce, err[:, b:]], 1)
            col = err.mean(0)                                 # each column's mean
            total = col @ self.col_weight                     # sum of weighted row means
            # the rows' terms for the log, in fp32 too: under autocast this product
            # ran in bf16 and logged each row to 3 digits (found on an H200 run)
            logs = col.detach() @ self.member
        out = {f"augself/{r.field}": logs[i] for i, r in enumerate(self.table)}
        out["augself"] = total.detach()
        out["loss"] = total
        return out
