"""Draw the parameters of each view from its ViewRecipe with the counter RNG.

``crop_box`` is torchvision's RandomResizedCrop.get_params, step for step
(10 attempts of area fraction ~ U(scale) and log aspect ~ U(log ratio), rounded
sides, uniform integer position, centre-crop fallback), with counter uniforms
instead of torch's global generator. It is plain numpy-scalar code so that the
FFCV op compiles it with numba as it is.

``sample_rest`` is the definition, in torch, of every field after the crop
(params.DRAWN: flip, colour, grayscale, blur, solarize, rotation). The loaders
draw them with its bit-exact numba twin (photometric_cpu.param_rows, one drawer
for every backend and stage); tests hold the two equal.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from pipelines import counter_rng as cr
from pipelines.recipe import ViewRecipe


def make_crop_box(uniform):
    """crop_box over a given counter uniform (numpy, or its numba-compiled twin)."""

    def crop_box(height, width, scale_lo, scale_hi, logr_lo, logr_hi, seed, epoch, index, view):
        """(top, left, h, w) in source pixels, as torchvision draws it."""
        area = height * width
        for k in range(cr.CROP_ATTEMPTS):
            s = scale_lo + (scale_hi - scale_lo) * uniform(seed, epoch, index, view, 2 * k)
            logr = logr_lo + (logr_hi - logr_lo) * uniform(seed, epoch, index, view, 2 * k + 1)
            target = area * s
            ar = math.exp(logr)
            w = int(round(math.sqrt(target * ar)))
            h = int(round(math.sqrt(target / ar)))
            if 0 < w <= width and 0 < h <= height:
                top = int(uniform(seed, epoch, index, view, cr.SLOT_POS_Y) * (height - h + 1))
                left = int(uniform(seed, epoch, index, view, cr.SLOT_POS_X) * (width - w + 1))
                return top, left, h, w
        in_ratio = width / height
        rmin, rmax = math.exp(logr_lo), math.exp(logr_hi)
        if in_ratio < rmin:
            w = width
            h = int(round(w / rmin))
        elif in_ratio > rmax:
            h = height
            w = int(round(h * rmax))
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    return crop_box


crop_box = make_crop_box(cr.uniform_np)


def crop_args(v: ViewRecipe) -> tuple[float, float, float, float]:
    return v.scale[0], v.scale[1], math.log(v.ratio[0]), math.log(v.ratio[1])


def crop_field(top, left, h, w, height, width):
    """Pixel box (top, left, h, w) of a height x width source -> the schema's crop
    field (y0/H, x0/W, h/H, w/W) as float64 quotients (the caller stores them as
    float32). The one conversion: crop_params and crop_fields call it on scalars
    and arrays, FFCV's op compiled by numba."""
    return top / height, left / width, h / height, w / width


def crop_params(box, height: int, width: int) -> np.ndarray:
    """One pixel box -> its schema crop field, float32 (4,)."""
    return np.array(crop_field(*box, height, width), dtype=np.float32)


_BATCH_KERNEL = None


def crop_boxes(heights: np.ndarray, widths: np.ndarray, views, seed: int, epoch: int,
               index: np.ndarray) -> np.ndarray:
    """crop_box for a batch: samples ``index`` (B,) of sizes (heights, widths),
    every view of ``views`` (ViewRecipes) -> int64 (B, V, 4) (top, left, h, w).
    The same function compiled by numba (fastmath off: the numbers are those of
    the plain-Python crop_box, bit for bit, which a test checks), so a loader
    draws a batch's boxes on the host in microseconds, without per-sample Python."""
    global _BATCH_KERNEL
    if _BATCH_KERNEL is None:
        import numba

        box = numba.njit(fastmath=False)(make_crop_box(numba.njit(fastmath=False)(
            cr.uniform_np)))

        @numba.njit(fastmath=False)
        def kernel(h, w, args, seed, epoch, index, out):
            for b in range(len(index)):
                for v in range(args.shape[0]):
                    t, lf, hh, ww = box(h[b], w[b], args[v, 0], args[v, 1], args[v, 2],
                                        args[v, 3], seed, epoch, index[b], v)
                    out[b, v, 0], out[b, v, 1], out[b, v, 2], out[b, v, 3] = t, lf, hh, ww

        _BATCH_KERNEL = kernel
    args = np.array([crop_args(v) for v in views], dtype=np.float64).reshape(-1, 4)
    out = np.empty((len(index), len(args), 4), dtype=np.int64)
    _BATCH_KERNEL(np.asarray(heights, np.int64), np.asarray(widths, np.int64), args,
                  np.int64(seed), np.int64(epoch), np.asarray(index, np.int64), out)
    return out


def crop_fields(boxes: np.ndarray, heights: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Pixel boxes (B, V, 4) -> schema crop field float32 (B, V, 4): crop_field on
    whole arrays (float64 quotients, then float32, as one box at a time)."""
    h = np.asarray(heights, np.int64)[:, None]
    w = np.asarray(widths, np.int64)[:, None]
    return np.stack(crop_field(*np.moveaxis(boxes, -1, 0), h, w), axis=-1).astype(np.float32)


def turns(r: ViewRecipe, seed: int, epoch: int, index: torch.Tensor, view: int) -> torch.Tensor:
    """Quarter turns of view ``view`` (float32 (B,)) if its recipe rotates: floor(4u)
    of the view's own uniform, or, with a rotate_shift s, (floor(4t) + s) mod 4 of
    the sample's shared uniform t (all exact in float32, as photometric_cpu draws)."""
    if r.rotate_shift < 0:
        return torch.floor(cr.uniform_torch(seed, epoch, index, view, cr.SLOT_ROT) * 4.0)
    t = torch.floor(cr.uniform_torch(seed, epoch, index, 0, cr.SLOT_ROT_SHARED) * 4.0)
    return torch.remainder(t + float(r.rotate_shift), 4.0)


def sample_rest(recipe_view: ViewRecipe, seed: int, epoch: int, index: torch.Tensor,
                view: int) -> dict[str, torch.Tensor]:
    """The drawn fields (params.DRAWN) of samples ``index`` (B,) of view ``view``:
    field -> float32 (B, width), on index's device."""

    def u(slot):
        return cr.uniform_torch(seed, epoch, index, view, slot)

    def coin(slot, p):
        return (u(slot) < p).to(torch.float32)

    r = recipe_view
    apply = coin(cr.SLOT_JITTER, r.jitter_p)
    color = []
    for k, (lo, hi) in enumerate(r.color_ranges()):
        draw = lo + (hi - lo) * u(cr.SLOT_COLOR + k)
        ident = 0.0 if k == 3 else 1.0
        color.append(torch.where(apply > 0, draw, torch.full_like(draw, ident)))
    blur_on = coin(cr.SLOT_BLUR, r.blur_p)
    lo, hi = r.blur_sigma
    sigma = (lo + (hi - lo) * u(cr.SLOT_SIGMA)) * blur_on
    return {
        "flip": coin(cr.SLOT_FLIP, r.flip_p)[:, None],
        "color": torch.stack(color, dim=1),
        "gray": coin(cr.SLOT_GRAY, r.gray_p)[:, None],
        "blur": sigma[:, None],
        "solarize": coin(cr.SLOT_SOLARIZE, r.solarize_p)[:, None],
        "rot": (turns(r, seed, epoch, index, view) * float(r.rotate))[:, None],
    }
