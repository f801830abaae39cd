"""The photometric stage for a CPU device: one numba kernel per view that takes
the uint8 crop to the uint8 final view in a handful of vectorised passes over a
planar float32 copy, instead of ~40 batched float32 torch passes
(pipelines/photometric.py, which stays the GPU path and the definition this file
is tested against).

Why: on 2 CPU cores the batched torch stage, even compiled, was the bottleneck
at 224 px (RESULTS.md: decode + 2 crops ~400 img/s, with the torch stage
~130 img/s). Here the work is per view, so it runs inside FFCV's decode loop
(in the loader's threads, while the model trains) or, for dali-cpu, in a
numba parallel loop over the batch.

Semantics: photometric.apply step for step, in float32, with torchvision's
formulas (brightness scale, contrast towards the mean luma, saturation towards
each pixel's luma, hue shift in HSV (the six-sector HSV -> RGB table in its
closed form), ITU-R 601 grayscale, Gaussian blur over 2*ceil(3 sigma)+1 taps with
reflect padding, solarize at 0.5); the result is rounded to uint8 as
reference.render rounds it. Differences from the torch path are float32 roundoff
only (summation order of the mean luma and the blur taps, fused multiply-adds):
the test bounds them at 1 level on a few values in a hundred thousand.

Parameters of a view travel as its drawn row: params.DRAWN_WIDTH float32
values named params.DRAWN_NAMES (flip, the four colour factors, gray, blur
sigma, solarize, rotation), each read and written at its position params.AT[name]
(module constants below, which numba folds in at compile time). ``draw_rest``
draws them with the counter RNG exactly as sampling.sample_rest does in torch
(float32 arithmetic in the same order), so a backend may draw them here or there.
"""

from __future__ import annotations

import dataclasses
import math

import numba
import numpy as np
import torch

from pipelines import counter_rng as cr
from pipelines import params
from pipelines.recipe import Recipe, ViewRecipe

REST = params.DRAWN_NAMES  # the drawn row's values, in order
_FLIP, _BRI, _CON, _SAT, _HUE, _GRAY, _BLUR, _SOL, _ROT = (
    params.AT[n] for n in ("flip", "brightness", "contrast", "saturation", "hue", "gray", "blur",
                           "solarize", "rot"))
assert len(REST) == 9, "a new drawn field needs its draw (draw_rest) and its renderer here"

# The draw table: the settings of one view (recipe.ViewRecipe) that the draws read,
# as a float64 row for numba, each at ROW[name]. Derived from ViewRecipe's own
# fields (all but the crop's, which sampling.crop_box reads), in their order, each
# flattened; ``jitter`` enters as its torchvision ranges (color_ranges: (lo, hi)
# per b, c, s, h), which is what the draw uses.
_CROP_SETTINGS = ("size", "scale", "ratio")


def _settings(vr: ViewRecipe) -> dict[str, tuple[float, ...]]:
    out = {}
    for f in dataclasses.fields(ViewRecipe):
        if f.name in _CROP_SETTINGS:
            continue
        value = getattr(vr, f.name)
        if f.name == "jitter":
            value = [x for pair in vr.color_ranges() for x in pair]
        out[f.name] = tuple(float(x) for x in np.atleast_1d(value))
    return out


_WIDTHS = {k: len(v) for k, v in _settings(ViewRecipe()).items()}
ROW: dict[str, int] = {k: sum(list(_WIDTHS.values())[:i]) for i, k in enumerate(_WIDTHS)}
_R_FLIP, _R_JITTER, _R_COLOR, _R_GRAY, _R_BLUR, _R_SIGMA, _R_SOL, _R_ROT, _R_SHIFT = (
    ROW[n] for n in ("flip_p", "jitter_p", "jitter", "gray_p", "blur_p", "blur_sigma",
                     "solarize_p", "rotate", "rotate_shift"))

_uniform = numba.njit(cr.uniform_np)


def recipe_row(vr: ViewRecipe) -> np.ndarray:
    """One view's draw table row, float64 (sum of the settings' widths,)."""
    return np.array([x for v in _settings(vr).values() for x in v], dtype=np.float64)


def recipe_rows(recipe: Recipe) -> np.ndarray:
    """(V, len(ROW)) float64: recipe_row of every view."""
    return np.stack([recipe_row(vr) for vr in recipe.views])


# fastmath=False stated, not defaulted: numba lets a callee inherit fastmath from
# its caller, and FFCV compiles its pipeline with fastmath=True; inherited, the
# multiply-add below became an FMA and the draws moved by 1 ulp from torch's.
@numba.njit(nogil=True, cache=True, fastmath=False, error_model="numpy")
def draw_rest(row, seed, epoch, index, view, out):
    """The drawn row (params.DRAWN_NAMES) of (seed, epoch, index, view) into
    ``out`` (float32). Mirrors sampling.sample_rest: torch computes
    ``lo + (hi - lo) * u`` in float32 with u rounded from float64, and compares
    u < p in float32."""
    f32 = np.float32

    def u(slot):
        return f32(_uniform(seed, epoch, index, view, slot))

    def coin(slot, p):
        return f32(1.0) if u(slot) < f32(p) else f32(0.0)

    out[_FLIP] = coin(cr.SLOT_FLIP, row[_R_FLIP])
    jitter = coin(cr.SLOT_JITTER, row[_R_JITTER])
    for k in range(4):
        lo, hi = row[_R_COLOR + 2 * k], row[_R_COLOR + 1 + 2 * k]
        draw = f32(lo) + f32(hi - lo) * u(cr.SLOT_COLOR + k)
        ident = f32(0.0) if k == 3 else f32(1.0)
        out[_BRI + k] = draw if jitter > 0 else ident
    out[_GRAY] = coin(cr.SLOT_GRAY, row[_R_GRAY])
    blur_on = coin(cr.SLOT_BLUR, row[_R_BLUR])
    lo, hi = row[_R_SIGMA], row[_R_SIGMA + 1]
    out[_BLUR] = (f32(lo) + f32(hi - lo) * u(cr.SLOT_SIGMA)) * blur_on
    out[_SOL] = coin(cr.SLOT_SOLARIZE, row[_R_SOL])
    shift = row[_R_SHIFT]
    if shift < 0:  # the view's own turn, or the sample's shared one shifted (sampling.turns)
        turn = np.floor(u(cr.SLOT_ROT) * f32(4.0))
    else:
        t = np.floor(f32(_uniform(seed, epoch, index, 0, cr.SLOT_ROT_SHARED)) * f32(4.0))
        turn = f32((t + f32(shift)) % f32(4.0))
    out[_ROT] = turn * f32(row[_R_ROT])


@numba.njit(nogil=True, cache=True, fastmath=False, error_model="numpy")
def draw_rest_batch(rows, seed, epoch, index, out):
    """The drawn row of every view of samples ``index`` (B,): out[b, v] from rows[v]
    (recipe_rows). ``out`` (B, V, params.DRAWN_WIDTH) float32, any strides: the
    GPU stage writes the draws straight into its one parameter buffer."""
    for b in range(len(index)):
        for v in range(rows.shape[0]):
            draw_rest(rows[v], seed, epoch, index[b], v, out[b, v])


def param_rows(table: np.ndarray, seed: int, epoch: int, index, crop) -> np.ndarray:
    """Every parameter of every view of samples ``index`` (B,): the crop field as
    given (B, V, 4), the rest drawn by draw_rest_batch from ``table``
    (recipe_rows) -> float32 (B, V, params.WIDTH) in FIELDS order, a Batch's row.
    The one drawer: every backend and stage calls it where it computes the crop
    (sampling.sample_rest, the torch definition, is what tests hold it to)."""
    index = np.asarray(index, dtype=np.int64)
    out = np.empty((len(index), table.shape[0], params.WIDTH), np.float32)
    out[..., :params.DRAWN_AT] = crop
    draw_rest_batch(table, seed, epoch, index, out[..., params.DRAWN_AT:])
    return out


_L0, _L1, _L2 = np.float32(0.2989), np.float32(0.587), np.float32(0.114)

# Every kernel below: error_model="numpy" (no zero-division branch in the loops)
# and these fastmath flags, which change roundoff, not results, for the finite
# values met here: fused multiply-adds, reciprocals, signless zeros, and
# reassociation (vector sums). Both are what let LLVM vectorise the loops: the
# hue pass went 0.59 -> 0.03 ms per 224 px plane set on this machine's AVX-512.
# The layout is planar (3, S, W) float32 for the same reason: interleaved RGB
# (stride 3) did not vectorise at all.
FAST = {"nsz", "arcp", "contract", "nnan", "ninf", "reassoc"}
_JIT = dict(nogil=True, cache=True, error_model="numpy", fastmath=FAST)


@numba.njit(inline="always", **_JIT)
def _clamp01(x):
    return min(max(x, np.float32(0.0)), np.float32(1.0))


@numba.njit(inline="always", **_JIT)
def _hue(r, g, b, shift):
    """torchvision's rgb -> hsv, h += shift (mod 1), hsv -> rgb, one pixel.
    HSV -> RGB in the branch-free closed form (photometric.shift_hue): channel
    n in (5, 3, 1) is v - v*s*clamp(min(k, 4 - k), 0, 1), k = (n + 6h) mod 6,
    the six-sector table's values without its switch, which defeats vectorising.
    Measured against the table: 1.8e-6 at most."""
    f32 = np.float32
    maxc = max(r, max(g, b))
    minc = min(r, min(g, b))
    cr_ = maxc - minc
    eq = cr_ == f32(0.0)
    s = cr_ / (f32(1.0) if eq else maxc)
    inv = f32(1.0) / (f32(1.0) if eq else cr_)
    rc, gc, bc = (maxc - r) * inv, (maxc - g) * inv, (maxc - b) * inv
    h = (bc - gc) if maxc == r else ((f32(2.0) + rc - bc) if maxc == g else (f32(4.0) + gc - rc))
    h = f32(0.0) if eq else h
    h = h / f32(6.0) + f32(1.0)      # in [5/6, 11/6]: fmod(., 1) is h - floor(h)
    h = h - np.floor(h)
    h = h + shift
    h = h - np.floor(h)              # torch.remainder(h, 1); np.floor keeps float32
    h6 = h * f32(6.0)
    vs = maxc * s
    kr = f32(5.0) + h6
    kg = f32(3.0) + h6
    kb = f32(1.0) + h6
    kr = kr - f32(6.0) if kr >= f32(6.0) else kr
    kg = kg - f32(6.0) if kg >= f32(6.0) else kg
    kb = kb - f32(6.0) if kb >= f32(6.0) else kb
    fr = _clamp01(min(kr, f32(4.0) - kr))
    fg = _clamp01(min(kg, f32(4.0) - kg))
    fb = _clamp01(min(kb, f32(4.0) - kb))
    return maxc - vs * fr, maxc - vs * fg, maxc - vs * fb


@numba.njit(inline="always", **_JIT)
def _to_u8(x):
    return np.uint8(np.rint(_clamp01(x) * np.float32(255.0)))


def scratch_size(size: int) -> int:
    """Elements of float32 scratch render_view needs for a size x size view."""
    return 3 * size * size


@numba.njit(inline="always", **_JIT)
def _load(src, y, x, bri, inv255):
    """Source pixel (y, x) to float32 in [0, 1] with brightness applied."""
    r = _clamp01(np.float32(src[y, x, 0]) * inv255 * bri)
    g = _clamp01(np.float32(src[y, x, 1]) * inv255 * bri)
    b = _clamp01(np.float32(src[y, x, 2]) * inv255 * bri)
    return r, g, b


@numba.njit(**_JIT)
def render_view(src, p, out, tmp):
    """src, out: uint8 (S, W, 3), may be the same array; p: the view's drawn row
    (float32, params.DRAWN_WIDTH); tmp: float32 scratch of at least 3*S*W
    elements (scratch_size)."""
    f32 = np.float32
    S, W = src.shape[0], src.shape[1]
    n = S * W
    flip, bri, con, sat, hue = p[_FLIP] > 0.5, p[_BRI], p[_CON], p[_SAT], p[_HUE]
    gray, sigma, sol, rot = p[_GRAY] > 0.5, p[_BLUR], p[_SOL] > 0.5, int(p[_ROT]) % 4
    planes = tmp[:3 * n].reshape(3, S, W)
    R, G, B = planes[0], planes[1], planes[2]
    # uint8 -> float32 as torch's x / 255, brightness, flip, rotation; the mean luma
    # of the result for contrast (float32 row sums added in float64; torch's
    # float32 pairwise mean agrees to ~1e-7).
    inv255 = f32(1.0) / f32(255.0)
    total = 0.0
    # Two loops, not one over the general index map below: unturned views (the
    # common case) keep unit-stride reads, which LLVM vectorises.
    if rot == 0:
        for y in range(S):
            row = f32(0.0)
            for x in range(W):
                r, g, b = _load(src, y, W - 1 - x if flip else x, bri, inv255)
                R[y, x], G[y, x], B[y, x] = r, g, b
                row += _L0 * r + _L1 * g + _L2 * b
            total += row
    else:
        if S != W:
            raise ValueError("a rotated view must be square")
        # torch.rot90(view, rot) of the flipped view: output (y, x) reads the
        # flipped view at (a, b) = (x, S-1-y), (S-1-y, S-1-x) or (S-1-x, y) for
        # 1, 2 or 3 quarter turns counter-clockwise
        ay, ax, a0 = (0, 1, 0) if rot == 1 else ((-1, 0, S - 1) if rot == 2 else (0, -1, S - 1))
        by, bx, b0 = (-1, 0, S - 1) if rot == 1 else ((0, -1, S - 1) if rot == 2 else (1, 0, 0))
        if flip:
            by, bx, b0 = -by, -bx, S - 1 - b0
        for y in range(S):
            row = f32(0.0)
            for x in range(W):
                r, g, b = _load(src, ay * y + ax * x + a0, by * y + bx * x + b0, bri, inv255)
                R[y, x], G[y, x], B[y, x] = r, g, b
                row += _L0 * r + _L1 * g + _L2 * b
            total += row
    mean = f32(total / n)
    r1, g1, b1 = R.reshape(n), G.reshape(n), B.reshape(n)
    cm, s1 = (f32(1.0) - con) * mean, f32(1.0) - sat
    for i in range(n):  # contrast towards the mean luma, saturation towards the pixel's
        r = _clamp01(con * r1[i] + cm)
        g = _clamp01(con * g1[i] + cm)
        b = _clamp01(con * b1[i] + cm)
        lum = s1 * (_L0 * r + _L1 * g + _L2 * b)
        r1[i], g1[i], b1[i] = _clamp01(sat * r + lum), _clamp01(sat * g + lum), \
            _clamp01(sat * b + lum)
    if hue != 0:
        for i in range(n):
            r1[i], g1[i], b1[i] = _hue(r1[i], g1[i], b1[i], hue)
    if gray:
        for i in range(n):
            lum = _L0 * r1[i] + _L1 * g1[i] + _L2 * b1[i]
            r1[i], g1[i], b1[i] = lum, lum, lum
    if sigma > 0:
        _blur(planes, sigma)
    half = f32(0.5)
    for y in range(S):
        for x in range(W):
            r, g, b = R[y, x], G[y, x], B[y, x]
            if sol:
                r = f32(1.0) - r if r >= half else r
                g = f32(1.0) - g if g >= half else g
                b = f32(1.0) - b if b >= half else b
            out[y, x, 0], out[y, x, 1], out[y, x, 2] = _to_u8(r), _to_u8(g), _to_u8(b)


@numba.njit(**_JIT)
def gaussian_taps(sigma):
    """torchvision's 1-D kernel: 2*ceil(3 sigma)+1 taps, exp(-x^2 / 2 sigma^2), sum 1."""
    f32 = np.float32
    r = int(math.ceil(3.0 * sigma))
    w = np.empty(2 * r + 1, np.float32)
    tot = f32(0.0)
    for k in range(2 * r + 1):
        d = f32(k - r) / sigma
        w[k] = np.exp(f32(-0.5) * d * d)
        tot += w[k]
    for k in range(2 * r + 1):
        w[k] = w[k] / tot
    return w


@numba.njit(inline="always", **_JIT)
def _reflect(i, n):
    if i < 0:
        return -i
    if i >= n:
        return 2 * (n - 1) - i
    return i


@numba.njit(**_JIT)
def _blur(planes, sigma):
    """Separable Gaussian blur of float planes (3, S, W) in place, along W then
    along S (torchvision's order), with reflect padding as torchvision pads."""
    C, S, W = planes.shape
    w = gaussian_taps(sigma)
    r = (len(w) - 1) // 2
    if r >= min(S, W):
        raise ValueError("blur radius too large for the view (reflect padding)")
    pad = np.empty(W + 2 * r, np.float32)
    acc = np.empty(W, np.float32)
    for c in range(C):
        P = planes[c]
        for y in range(S):  # along W: each row through a padded copy
            for x in range(W):
                pad[x + r] = P[y, x]
            for x in range(1, r + 1):
                pad[r - x] = P[y, x]
                pad[W - 1 + r + x] = P[y, W - 1 - x]
            acc[:] = 0
            for k in range(2 * r + 1):
                wk = w[k]
                for x in range(W):
                    acc[x] += wk * pad[k + x]
            P[y, :] = acc
        ring = np.empty((S, W), np.float32)  # along S: rows read from a copy
        ring[:, :] = P
        for y in range(S):
            acc[:] = 0
            for k in range(2 * r + 1):
                wk = w[k]
                src = ring[_reflect(y + k - r, S)]
                for x in range(W):
                    acc[x] += wk * src[x]
            P[y, :] = acc


@numba.njit(nogil=True, parallel=True, cache=True)
def render_batch(crops, rest, out):
    """crops, out: uint8 (B, S, S, 3); rest: float32 (B, params.DRAWN_WIDTH), each
    sample's drawn row. Parallel over samples."""
    n, s = crops.shape[0], crops.shape[1]
    for i in numba.prange(n):
        tmp = np.empty(3 * s * s, np.float32)
        render_view(crops[i], rest[i], out[i], tmp)


def rest_of(p: dict) -> np.ndarray:
    """sample_rest's dict (field -> (B, width) tensors) -> its drawn rows, float32
    (B, params.DRAWN_WIDTH)."""
    return params.join(p, params.DRAWN).to(torch.float32).cpu().numpy()
