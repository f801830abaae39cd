"""The photometric stage for a GPU in one Triton launch per view: uint8 crops
(B, S, S, 3) -> flip, rotation, brightness, contrast, saturation, hue, grayscale, blur,
solarize, normalisation, the dtype cast and channels_last, in one pass of
global memory per phase, one program per image.

Why: the batched torch stage (pipelines/photometric.py) costs ~1,000 kernel
launches and ~50 ms of host time per batch of two 224 px views on an H100
(issue 10); here a view is one launch. ``TRITON_INTERPRET=1`` runs the same
kernel on CPU tensors, which is how the tests hold it to the reference on a
machine without a GPU.

Semantics: photometric.apply step for step in float32 (torchvision's formulas:
HSV hue in the closed form of the six-sector table, ITU-R 601 luma, contrast
towards the mean luma of the image after brightness, saturation towards each
pixel's luma, Gaussian blur of 2*ceil(3 sigma)+1 taps normalised over that
window with reflect padding, along W then H, solarize at 0.5). Differences from
the torch path are float32 roundoff (summation order of the mean and the blur
taps, fused multiply-adds); the raw view is rounded half up, torch rounds half
to even: a value landing exactly on k + 0.5 levels moves by one. The tests bound
both as photometric_cpu's: at most 1 level, on under 0.5% of values.

Phases of a program (one image), separated by barriers because later phases
read what other threads of the program wrote:
1. mean luma after brightness (contrast needs it before any pixel is final);
2. per pixel, the colour ops; an image without blur is finished here,
   a blurred one goes to scratch;
3. blur along W (scratch -> scratch2), 4. along H, then solarize, normalise,
   store. Images without blur skip 3 and 4 (a scalar branch: no host sync).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from pipelines import params as schema
from pipelines.recipe import ViewRecipe

BLOCK = 1024
# Where each value sits in a view's drawn row (pipelines/params.py): compile-time
# constants of the kernel (Triton reads globals only as constexpr).
_FLIP = tl.constexpr(schema.AT["flip"])
_BRI = tl.constexpr(schema.AT["brightness"])
_CON = tl.constexpr(schema.AT["contrast"])
_SAT = tl.constexpr(schema.AT["saturation"])
_HUE = tl.constexpr(schema.AT["hue"])
_GRAY = tl.constexpr(schema.AT["gray"])
_SIGMA = tl.constexpr(schema.AT["blur"])
_SOL = tl.constexpr(schema.AT["solarize"])
_ROT = tl.constexpr(schema.AT["rot"])


@triton.jit
def _clamp01(x):
    return tl.minimum(tl.maximum(x, 0.0), 1.0)


@triton.jit
def _hue(r, g, b, shift):
    """torchvision's rgb -> hsv, h += shift (mod 1), hsv -> rgb (closed form)."""
    maxc = tl.maximum(r, tl.maximum(g, b))
    minc = tl.minimum(r, tl.minimum(g, b))
    delta = maxc - minc
    eq = delta == 0.0
    s = delta / tl.where(eq, 1.0, maxc)
    d = tl.where(eq, 1.0, delta)
    rc = (maxc - r) / d
    gc = (maxc - g) / d
    bc = (maxc - b) / d
    h = tl.where(maxc == r, bc - gc, tl.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = tl.where(eq, 0.0, h)
    h = h / 6.0 + 1.0
    h = h - tl.floor(h)
    h = h + shift
    h = h - tl.floor(h)
    h6 = h * 6.0
    vs = maxc * s
    kr = 5.0 + h6
    kg = 3.0 + h6
    kb = 1.0 + h6
    kr = tl.where(kr >= 6.0, kr - 6.0, kr)
    kg = tl.where(kg >= 6.0, kg - 6.0, kg)
    kb = tl.where(kb >= 6.0, kb - 6.0, kb)
    fr = _clamp01(tl.minimum(kr, 4.0 - kr))
    fg = _clamp01(tl.minimum(kg, 4.0 - kg))
    fb = _clamp01(tl.minimum(kb, 4.0 - kb))
    return maxc - vs * fr, maxc - vs * fg, maxc - vs * fb


@triton.jit
def _reflect(i, n):
    i = tl.where(i < 0, -i, i)
    return tl.where(i >= n, 2 * (n - 1) - i, i)


@triton.jit
def _blur_block(src, base, offs, m, S, sigma, reach, wsum, RADIUS: tl.constexpr,
                ALONG_W: tl.constexpr, BLOCK: tl.constexpr):
    """One block of pixels of a separable Gaussian pass over an (S, S, 3) float image:
    taps |k| <= reach (= ceil(3 sigma)) of exp(-k^2 / 2 sigma^2) / wsum, reflect padding."""
    y = offs // S
    x = offs - y * S
    ar = tl.zeros([BLOCK], tl.float32)
    ag = tl.zeros([BLOCK], tl.float32)
    ab = tl.zeros([BLOCK], tl.float32)
    for k in range(-RADIUS, RADIUS + 1):
        d = k / sigma
        w = tl.where(tl.abs(k * 1.0) <= reach, tl.exp(-0.5 * d * d), 0.0) / wsum
        if ALONG_W:
            q = src + base + (y * S + _reflect(x + k, S)) * 3
        else:
            q = src + base + (_reflect(y + k, S) * S + x) * 3
        ar += w * tl.load(q, mask=m, other=0.0)
        ag += w * tl.load(q + 1, mask=m, other=0.0)
        ab += w * tl.load(q + 2, mask=m, other=0.0)
    return ar, ag, ab


@triton.jit
def _store(out, raw, base, offs, m, r, g, b, sol, m0, m1, m2, s0, s1, s2,
           SOLARIZE: tl.constexpr, RAW: tl.constexpr):
    if SOLARIZE:
        # where(flag, cond, False), not flag & cond: Triton's interpreter cannot
        # `&` a scalar flag with a block (numpy refuses the (1,) & (BLOCK,) cast)
        r = tl.where(tl.where(sol, r >= 0.5, False), 1.0 - r, r)
        g = tl.where(tl.where(sol, g >= 0.5, False), 1.0 - g, g)
        b = tl.where(tl.where(sol, b >= 0.5, False), 1.0 - b, b)
    p = base + offs * 3
    ty = out.dtype.element_ty
    tl.store(out + p, ((r - m0) / s0).to(ty), mask=m)
    tl.store(out + p + 1, ((g - m1) / s1).to(ty), mask=m)
    tl.store(out + p + 2, ((b - m2) / s2).to(ty), mask=m)
    if RAW:
        tl.store(raw + p, tl.floor(_clamp01(r) * 255.0 + 0.5).to(tl.uint8), mask=m)
        tl.store(raw + p + 1, tl.floor(_clamp01(g) * 255.0 + 0.5).to(tl.uint8), mask=m)
        tl.store(raw + p + 2, tl.floor(_clamp01(b) * 255.0 + 0.5).to(tl.uint8), mask=m)


# No argument may be named ``params``, ``specialization`` or ``options``: Triton
# 3.6's generated argument binder has locals of those names, and an argument
# called ``params`` reached the specializer as the binder's dict ("failed to
# specialize argument of type: dict", found on an H200 with Triton 3.6.0; 3.8
# does not show it). tests/test_triton_targets.py holds the names to this.
@triton.jit
def _render(src, rows, col, rest_stride, out, raw, tmp, S,
            m0, m1, m2, s0, s1, s2,
            HUE: tl.constexpr, BLUR: tl.constexpr, RADIUS: tl.constexpr,
            SOLARIZE: tl.constexpr, ROTATE: tl.constexpr, RAW: tl.constexpr,
            BLOCK: tl.constexpr):
    img = tl.program_id(0).to(tl.int64)
    n = S * S
    base = img * n * 3
    tmp2 = tmp + tl.num_programs(0).to(tl.int64) * n * 3  # second half of the scratch
    pr = rows + img * rest_stride + col
    flip = tl.load(pr + _FLIP) > 0.5
    bri = tl.load(pr + _BRI)
    con = tl.load(pr + _CON)
    sat = tl.load(pr + _SAT)
    hue = tl.load(pr + _HUE)
    gray = tl.load(pr + _GRAY) > 0.5
    sigma = tl.load(pr + _SIGMA)
    sol = tl.load(pr + _SOL) > 0.5
    turns = tl.load(pr + _ROT).to(tl.int32)
    lane = tl.arange(0, BLOCK)

    # 1. mean luma after brightness (flip does not change it)
    acc = tl.zeros([BLOCK], tl.float32)
    for start in range(0, n, BLOCK):
        offs = start + lane
        m = offs < n
        p = src + base + offs * 3
        r = _clamp01(tl.load(p, mask=m, other=0).to(tl.float32) / 255.0 * bri)
        g = _clamp01(tl.load(p + 1, mask=m, other=0).to(tl.float32) / 255.0 * bri)
        b = _clamp01(tl.load(p + 2, mask=m, other=0).to(tl.float32) / 255.0 * bri)
        acc += tl.where(m, 0.2989 * r + 0.587 * g + 0.114 * b, 0.0)
    mean = tl.sum(acc, axis=0) / n
    cm = (1.0 - con) * mean
    s1m = 1.0 - sat
    blurred = sigma > 0.0

    # 2. colour, per pixel of the output (the source pixel mirrored when flipped;
    # with ROTATE, output (y, x) of torch.rot90(flipped view, turns) reads the
    # flipped view at (x, S-1-y), (S-1-y, S-1-x) or (S-1-x, y) for 1, 2, 3 turns)
    for start in range(0, n, BLOCK):
        offs = start + lane
        m = offs < n
        y = offs // S
        x = offs - y * S
        sy = y
        if ROTATE:
            sy = tl.where(turns == 1, x, tl.where(turns == 2, S - 1 - y,
                                                   tl.where(turns == 3, S - 1 - x, y)))
            x = tl.where(turns == 1, S - 1 - y, tl.where(turns == 2, S - 1 - x,
                                                          tl.where(turns == 3, y, x)))
        sx = tl.where(flip, S - 1 - x, x)
        p = src + base + (sy * S + sx) * 3
        r = _clamp01(tl.load(p, mask=m, other=0).to(tl.float32) / 255.0 * bri)
        g = _clamp01(tl.load(p + 1, mask=m, other=0).to(tl.float32) / 255.0 * bri)
        b = _clamp01(tl.load(p + 2, mask=m, other=0).to(tl.float32) / 255.0 * bri)
        r = _clamp01(con * r + cm)
        g = _clamp01(con * g + cm)
        b = _clamp01(con * b + cm)
        lum = s1m * (0.2989 * r + 0.587 * g + 0.114 * b)
        r = _clamp01(sat * r + lum)
        g = _clamp01(sat * g + lum)
        b = _clamp01(sat * b + lum)
        if HUE:
            hr, hg, hb = _hue(r, g, b, hue)
            shifted = hue != 0.0
            r = tl.where(shifted, hr, r)
            g = tl.where(shifted, hg, g)
            b = tl.where(shifted, hb, b)
        lum = 0.2989 * r + 0.587 * g + 0.114 * b
        r = tl.where(gray, lum, r)
        g = tl.where(gray, lum, g)
        b = tl.where(gray, lum, b)
        if BLUR:
            q = tmp + base + offs * 3
            to_blur = tl.where(blurred, m, False)
            tl.store(q, r, mask=to_blur)
            tl.store(q + 1, g, mask=to_blur)
            tl.store(q + 2, b, mask=to_blur)
            _store(out, raw, base, offs, tl.where(blurred, False, m), r, g, b, sol, m0, m1, m2,
                   s0, s1, s2, SOLARIZE, RAW)
        else:
            _store(out, raw, base, offs, m, r, g, b, sol, m0, m1, m2, s0, s1, s2, SOLARIZE, RAW)

    if BLUR:
        if blurred:
            # torchvision's kernel: taps |k| <= ceil(3 sigma), normalised over them
            reach = tl.ceil(3.0 * sigma)
            wsum = sigma * 0.0
            for k in range(-RADIUS, RADIUS + 1):
                d = k / sigma
                wsum += tl.where(tl.abs(k * 1.0) <= reach, tl.exp(-0.5 * d * d), 0.0)
            tl.debug_barrier()
            # 3. along W (scratch -> scratch2)
            for start in range(0, n, BLOCK):
                offs = start + lane
                m = offs < n
                ar, ag, ab = _blur_block(tmp, base, offs, m, S, sigma, reach, wsum, RADIUS,
                                         True, BLOCK)
                q = tmp2 + base + offs * 3
                tl.store(q, ar, mask=m)
                tl.store(q + 1, ag, mask=m)
                tl.store(q + 2, ab, mask=m)
            tl.debug_barrier()
            # 4. along H, then solarize, normalise, store
            for start in range(0, n, BLOCK):
                offs = start + lane
                m = offs < n
                ar, ag, ab = _blur_block(tmp2, base, offs, m, S, sigma, reach, wsum, RADIUS,
                                         False, BLOCK)
                _store(out, raw, base, offs, m, ar, ag, ab, sol, m0, m1, m2, s0, s1, s2,
                       SOLARIZE, RAW)


def render(crops: torch.Tensor, params: torch.Tensor, col: int, vr: ViewRecipe, mean, std,
           dtype: torch.dtype, keep_raw: bool = False):
    """crops: uint8 (B, S, S, 3) contiguous; params: float32 (B, ...) contiguous,
    whose row b holds this view's drawn row (params.DRAWN_WIDTH values) from column
    col of its flattened row (the batch's one parameter buffer: no slice op). -> (views
    (B, 3, S, S) ``dtype`` channels_last, normalised with ``mean``/``std``; raw
    uint8 (B, S, S, 3) or None). One launch, three allocations, one permute."""
    B, S = crops.shape[0], crops.shape[1]
    if not params.is_contiguous() or math.prod(params.shape[1:]) < col + schema.DRAWN_WIDTH:
        raise ValueError(f"params must be contiguous with {schema.DRAWN_WIDTH} drawn values "
                         "from column col")
    blur = vr.blur_p > 0
    radius = math.ceil(3 * vr.blur_sigma[1]) if blur else 0
    if blur and radius >= S:
        raise ValueError(f"blur radius {radius} too large for {S}x{S} views (reflect padding)")
    out = torch.empty((B, S, S, 3), dtype=dtype, device=crops.device)
    raw = torch.empty_like(crops) if keep_raw else crops  # crops: an unused placeholder
    tmp = torch.empty((2, B, S, S, 3) if blur else (1,), dtype=torch.float32,
                      device=crops.device)
    _render[(B,)](crops, params, col, params.stride(0), out, raw, tmp, S,
                  float(mean[0]), float(mean[1]), float(mean[2]),
                  float(std[0]), float(std[1]), float(std[2]),
                  HUE=bool(vr.jitter_p > 0 and vr.jitter[3] > 0), BLUR=blur, RADIUS=radius,
                  SOLARIZE=bool(vr.solarize_p > 0), ROTATE=bool(vr.rotate), RAW=keep_raw,
                  BLOCK=BLOCK)
    return out.permute(0, 3, 1, 2), (raw if keep_raw else None)
