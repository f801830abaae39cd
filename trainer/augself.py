"""AugSelf (Lee et al., NeurIPS 2021): predict the *difference* of the
augmentation parameters of two views from their backbone features.

The objective is a table: one Row per parameter (field, width, loss, weight,
code). One head per row with a positive weight, Linear(2F, 512)-BN-ReLU-
Linear(512, 512)-BN-ReLU-Linear(512, k) on [f(v1), f(v2)], trained on both
orders (v1, v2) and (v2, v1) (paper Eq. 3 and Sec. 3; the reference code's
``load_ss_predictor`` and ``SSObjective``). Regression rows use MSE on
tanh(prediction); flip is same-or-not with BCE; rotation is a 4-way
classification of the difference of quarter turns mod 4 (cross-entropy), as
the paper treats its discrete rotation augmentation. It wraps any method: it only
reads ``feats`` of the first two views and ``batch.row`` (pipelines/batch.py).

A row's *code* is the one definition of its target: an affine map of the row's
field values in one view, code = f @ M + c with M (FIELDS[field], code width)
and c (code width,), which may depend on the view's recipe. The loss kind says
how the codes of views a and b become the target: "mse_tanh" code_a - code_b;
"bce" same-or-not 1 - |code_a - code_b| (0/1 flags); "ce" the one-hot of
(code_a - code_b) mod k over the row's k classes (code width 1, k logits).
The table's codes, from the raw parameters of the schema (pipelines/params.py):
- crop: (centre y, centre x, height, width), all relative to the source image.
  The centre is not mirrored for flipped views: flip has its own row (the
  reference code mirrors both centres with the first view's flip flag, a bug
  we do not reproduce).
- color: (b - 1)/Rb, (c - 1)/Rc, (s - 1)/Rs, hue/Rh, with R = hi - lo of each
  of the view's jitter ranges (torchvision's ranges: 0.8 for strength 0.4); a
  skipped jitter reports the identity and so encodes as 0.
- flip (bce), blur (sigma; 0 for a view without blur), gray, solarize (flags;
  optional rows, off by default), rot (quarter turns, "ce" over 4 classes;
  optional, and refused unless one of the first two views rotates: a recipe
  with ``rotate: true``): the value itself.

One batched head (issue 10: launch-light). Every code is affine, so all targets
of both orders come from one matrix product of the two views' flattened
parameters (code_map, derived from the rows' codes; ``Row.target`` applies
the same codes one row at a time, and tests hold both to rows written out by hand).
The R row heads run as one
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

from pipelines.params import FIELDS, OFFSETS, WIDTH
from pipelines.recipe import Recipe, ViewRecipe

# the view's recipe -> (M (FIELDS[field], code width), c (code width,))
Code = Callable[[ViewRecipe], tuple[torch.Tensor, torch.Tensor]]
KINDS = ("mse_tanh", "bce", "ce")


def centre_and_size(vr: ViewRecipe) -> tuple[torch.Tensor, torch.Tensor]:
    """crop (y0, x0, h, w) -> (y0 + h/2, x0 + w/2, h, w)."""
    M = torch.eye(4)
    M[2, 0] = M[3, 1] = 0.5
    return M, torch.zeros(4)


def over_range(vr: ViewRecipe) -> tuple[torch.Tensor, torch.Tensor]:
    """color (b, c, s, h) -> ((b-1)/Rb, (c-1)/Rc, (s-1)/Rs, h/Rh), R = hi - lo of
    the view's jitter ranges (a range of width 0: 1, the value unscaled)."""
    width = [(hi - lo) or 1.0 for lo, hi in vr.color_ranges()]
    return (torch.diag(torch.tensor([1.0 / w for w in width])),
            torch.tensor([-centre / w for centre, w in zip((1.0, 1.0, 1.0, 0.0), width)]))


def value(vr: ViewRecipe) -> tuple[torch.Tensor, torch.Tensor]:
    """A one-value field as it is (a flag, sigma, quarter turns)."""
    return torch.ones(1, 1), torch.zeros(1)


@dataclass(frozen=True)
class Row:
    field: str
    width: int       # the head's outputs: the code's width; a "ce" row's k classes
    loss: str        # "mse_tanh", "bce" or "ce" (module docstring: code -> target)
    weight: float
    code: Code       # the definition of the target
    name: str = ""   # the key of its log and target; the field's name when not given

    def __post_init__(self):
        # the head treats any kind but "bce" and "ce" as "mse_tanh": a misspelt kind
        # would silently train as a regression
        if self.loss not in KINDS:
            raise ValueError(f"AugSelf row {self.name or self.field!r}: unknown loss "
                             f"{self.loss!r}; one of {', '.join(KINDS)}")
        if self.loss == "ce" and self.width < 2:
            raise ValueError(f"AugSelf row {self.name or self.field!r}: a 'ce' row needs "
                             f"width >= 2 (its classes), got {self.width}")
        if self.field not in FIELDS:
            raise ValueError(f"AugSelf row {self.name or self.field!r}: unknown field "
                             f"{self.field!r}; one of {', '.join(FIELDS)}")
        object.__setattr__(self, "name", self.name or self.field)
        self.affine(ViewRecipe())  # a code of the wrong shape is refused here, not in a step

    def affine(self, vr: ViewRecipe) -> tuple[torch.Tensor, torch.Tensor]:
        """The code of a view with recipe ``vr``: (M, c), float32, shapes checked."""
        M, c = (torch.as_tensor(t, dtype=torch.float32) for t in self.code(vr))
        n, k = FIELDS[self.field], 1 if self.loss == "ce" else self.width
        if tuple(M.shape) != (n, k) or tuple(c.shape) != (k,):
            raise ValueError(
                f"AugSelf row {self.name!r}: its code gives M {tuple(M.shape)} and c "
                f"{tuple(c.shape)}; a {self.loss!r} row of width {self.width} over {self.field!r} "
                f"({n} value{'s' if n != 1 else ''}) needs M {(n, k)} and c ({k},)"
                + (" (a 'ce' row's code is one value, its class before mod k)"
                   if self.loss == "ce" else ""))
        return M, c

    def target(self, row: torch.Tensor, a: int, b: int, recipe: Recipe) -> torch.Tensor:
        """The targets of the views (a, b) from the Batch's parameter row
        (B, V, params.WIDTH): (B, width), from the code alone, one row at a time."""
        (Ma, ca), (Mb, cb) = columns([self], recipe.views[a]), columns([self], recipe.views[b])
        d = (row[:, a] @ Ma.to(row) + ca.to(row)) - (row[:, b] @ Mb.to(row) + cb.to(row))
        return finish(d, *kinds([self], row.device))


def rows(weights: dict[str, float]) -> list[Row]:
    """The table with the given weights; rows with weight 0 are left out."""
    table = [Row("crop", 4, "mse_tanh", weights.get("crop", 0.0), centre_and_size),
             Row("color", 4, "mse_tanh", weights.get("color", 0.0), over_range),
             Row("flip", 1, "bce", weights.get("flip", 0.0), value),
             Row("blur", 1, "mse_tanh", weights.get("blur", 0.0), value),
             Row("gray", 1, "mse_tanh", weights.get("gray", 0.0), value),
             Row("solarize", 1, "mse_tanh", weights.get("solarize", 0.0), value),
             Row("rot", 4, "ce", weights.get("rot", 0.0), value)]
    unknown = set(weights) - {r.field for r in table}
    if unknown:
        raise ValueError(f"unknown AugSelf rows {sorted(unknown)}")
    return [r for r in table if r.weight > 0]


def columns(table: list[Row], vr: ViewRecipe) -> tuple[torch.Tensor, torch.Tensor]:
    """The table's codes of one view as one affine map of its flattened parameters:
    code = p @ M + c, M (params.WIDTH, sum of widths), the rows side by side. A
    "ce" row's one code is repeated in each of its k class columns, where the
    difference of two views' codes becomes one-hot (finish)."""
    Ms, cs = [], []
    for r in table:
        m, c = r.affine(vr)
        M = torch.zeros(WIDTH, r.width)
        M[OFFSETS[r.field]:OFFSETS[r.field] + len(m)] = m  # (n, 1) fills k columns for "ce"
        Ms.append(M)
        cs.append(c.expand(r.width))
    return torch.cat(Ms, 1), torch.cat(cs)


def code_map(table: list[Row], recipe: Recipe) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, c) with [p_v1, p_v2] @ M + c = every row's code(v1) - code(v2), side by
    side: M (2 * params.WIDTH, sum of widths)."""
    (M1, c1), (M2, c2) = columns(table, recipe.views[0]), columns(table, recipe.views[1])
    return torch.cat([M1, -M2]), c1 - c2


def kinds(table: list[Row], device=None) -> tuple[torch.Tensor, list[tuple[int, int]],
                                                  torch.Tensor]:
    """Per column of the rows side by side: whether it is same-or-not ("bce"),
    the "ce" rows' column spans, and a "ce" column's class (0 elsewhere)."""
    same = torch.cat([torch.full((r.width,), r.loss == "bce") for r in table])
    spans, cls, o = [], torch.zeros(len(same)), 0
    for r in table:
        if r.loss == "ce":
            spans.append((o, o + r.width))
            cls[o:o + r.width] = torch.arange(r.width, dtype=torch.float32)
        o += r.width
    return same.to(device), spans, cls.to(device)


def finish(d: torch.Tensor, same: torch.Tensor | None, spans: list[tuple[int, int]],
           cls: torch.Tensor) -> torch.Tensor:
    """Code differences (N, sum of widths) -> targets, by loss kind: a "bce"
    column 1 - |d| (same-or-not: 1 when both flags agree), a "ce" row's columns
    the one-hot of d mod k; "mse_tanh" columns d itself. ``same`` None: no "bce"."""
    if same is not None:
        d = torch.where(same, 1.0 - d.abs(), d)
    for a, b in spans:
        d = torch.cat([d[:, :a], (torch.remainder(d[:, a:b], b - a) == cls[a:b]).to(d.dtype),
                       d[:, b:]], 1)
    return d


def targets(table: list[Row], row: torch.Tensor, recipe: Recipe) -> dict[str, torch.Tensor]:
    """Per row (by name): the targets of both orders stacked, (2B, width): (v1, v2)
    then (v2, v1). One row at a time; AugSelf computes the same numbers as one
    product (code_map)."""
    return {r.name: torch.cat([r.target(row, 0, 1, recipe), r.target(row, 1, 0, recipe)])
            for r in table}


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
        # with views that never turn, every pair is 0 turns apart: a head trained on
        # class 0 alone (config.validate says the same in the options' terms)
        if any(r.field == "rot" for r in table) and not any(v.rotate for v in recipe.views[:2]):
            raise ValueError("AugSelf row 'rot' predicts how far apart the first two views are "
                             "turned, but neither turns: give them rotate: true (recipe: "
                             "{all: {rotate: true}}), or leave the row out (augself_rot 0)")
        self.table, self.recipe = table, recipe
        widths = [r.width for r in table]
        self.heads = RowHeads(2 * features, hidden, widths)
        M, c = code_map(table, recipe)
        same, self.ce_rows, cls = kinds(table)
        # per column: 1/width of its row (the row's mean; a "ce" row's columns sum
        # to its cross-entropy: weight 1), and row membership
        member = torch.zeros(sum(widths), len(table))
        o = 0
        for i, r in enumerate(table):
            member[o:o + r.width, i] = 1.0 if r.loss == "ce" else 1.0 / r.width
            o += r.width
        weight = torch.tensor([float(r.weight) for r in table])
        self.has_bce = bool(same.any())
        # Built once, moved with the module: no host-to-device copy in the step.
        # [code(v1) - code(v2), code(v2) - code(v1)] = [p1, p2] @ [M, -M] + [c, -c]
        for name, t in (("code_m", torch.cat([M, -M], 1)), ("code_c", torch.cat([c, -c])),
                        ("same", same), ("member", member), ("cls", cls),
                        ("col_weight", member @ weight)):
            self.register_buffer(name, t, persistent=False)

    def targets(self, row: torch.Tensor) -> torch.Tensor:
        """Every row's targets from the Batch's parameter row (B, V, params.WIDTH),
        both orders interleaved: (2B, sum of widths), rows side by side; row 2i is
        (v1, v2) of sample i, row 2i+1 is (v2, v1)."""
        p = row[:, :2].reshape(-1, 2 * WIDTH)  # a view when the Batch has two views
        # parameters are float32 (the Batch contract), the buffers too but in an fp64 run
        d = torch.addmm(self.code_c, p.to(self.code_m.dtype), self.code_m)
        d = d.view(len(p) * 2, -1)
        return finish(d, self.same if self.has_bce else None, self.ce_rows, self.cls)

    def forward(self, feats: list[torch.Tensor], batch) -> dict[str, torch.Tensor]:
        f1, f2 = feats[0], feats[1]
        z = torch.cat([f1, f2, f2, f1], 1).view(2 * len(f1), -1)
        pred = self.heads(z)
        # Targets and losses in fp32 (fp64 in an fp64 run) even under autocast, which
        # would run their matrix products in bf16 (3 significant digits).
        with torch.autocast(z.device.type, enabled=False):
            if pred.dtype in (torch.bfloat16, torch.float16):
                pred = pred.float()
            want = self.targets(batch.row)
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
        out = {f"augself/{r.name}": logs[i] for i, r in enumerate(self.table)}
        out["augself"] = total.detach()
        out["loss"] = total
        return out
