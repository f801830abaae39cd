"""The Triton stage's self-check on first use: its first batch is rendered again
by the torch stage (photometric.apply, the definition the tests and the H100
validated) on the same device, from the same crops and the same drawn
parameters, and the two are compared in 8-bit levels.

Why: a kernel that compiles but computes wrong pixels (a miscompile, a barrier
that does not hold on some GPU) raises nothing; without this the loader would
train silently on wrong views. A disagreement switches the loader to the torch
stage (pipelines/batch.py), and the first batch handed over is the torch one.

Bound: the issue's (float32 roundoff near a rounding boundary; half up against
half to even): at most MAX_LEVELS off, on under MAX_SHARE of the values. Looser
than the tests' (tests/test_fused_stage.py: under 2.5e-4, 5x the share measured in
the interpreter), on purpose: another GPU's fused multiply-adds and exp may round
differently, and a false alarm costs a slower run, not a wrong one. Compared per view: the normalised views as they
are trained on (de-normalised to levels and rounded; the torch stage's views are
cast to the same dtype first, so bf16's coarser steps, up to ~0.9 of a level near
the top of the range, fall the same way on both sides), and the uint8 raw views
when the loader keeps them.

Cost, once per loader: one more render of the first batch by the uncompiled
torch stage (~1,000 launches and ~50 ms of host time for two 224 px views of a
batch of 256 on an H100, issue 10; a few seconds in Triton's interpreter at
16 px), a few elementwise ops per view, and one blocking device-to-host read per
view (the first batch waits for the GPU once). Later batches pay nothing.
"""

from __future__ import annotations

import torch

from pipelines import photometric
from pipelines.params import DRAWN

MAX_LEVELS = 1      # largest difference tolerated, in 8-bit levels
MAX_SHARE = 5e-3    # share of values that may be off at all (the tests: 2.5e-4)


def levels(views: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Normalised views (B, 3, H, W) -> their 8-bit levels, rounded (int32)."""
    return ((views.float() * std + mean) * 255).round().to(torch.int32)


def disagreement(a: torch.Tensor, b: torch.Tensor) -> tuple[int, float]:
    """(largest difference, share of values that differ) of two integer tensors."""
    d = (a.to(torch.int32) - b.to(torch.int32)).abs()
    largest, off = torch.stack([d.max().long(), (d > 0).sum()]).tolist()  # one host read
    return int(largest), off / max(d.numel(), 1)


def torch_render(finish, crops, batch):
    """The torch stage's views (and raw views when ``finish.keep_raw``) of
    ``crops``, from the parameters the Triton stage drew (batch.params): the same
    parameters by construction, whatever the draw's roundoff on this device."""
    views, raws = [], []
    for v, (crop, vr) in enumerate(zip(crops, finish.recipe.views)):
        p = {k: batch.params[k][:, v] for k in DRAWN}
        x, r = finish.torch_view(crop, p, vr, photometric.apply)
        views.append(x)
        raws.append(r)
    return views, (raws if finish.keep_raw else None)


def compare(batch, views, raws, mean, std) -> tuple[bool, str]:
    """(within the bound, one line: per view the share of values off and the
    largest difference; on failure only the views outside the bound)."""
    rows = []
    for v, (y, want) in enumerate(zip(batch.views, views)):
        rows.append((f"view {v}", *disagreement(levels(y, mean, std), levels(want, mean, std))))
    if raws is not None and batch.raw is not None:
        for v, (r, want) in enumerate(zip(batch.raw, raws)):
            rows.append((f"raw view {v}", *disagreement(r, want)))
    bad = [row for row in rows if row[1] > MAX_LEVELS or row[2] >= MAX_SHARE]
    shown = bad or rows
    text = "; ".join(f"{name}: {share:.4%} of values off, largest {largest} level"
                     f"{'' if largest == 1 else 's'}" for name, largest, share in shown)
    return not bad, f"{text} (bound: {MAX_LEVELS} level, on under {MAX_SHARE:.1%})"
