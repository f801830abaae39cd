"""Batched flip, rotation, colour jitter, grayscale, blur and solarize in torch,
on the training device: the same semantics as reference.photometric, one call
per view for the whole batch.

Why torch and not DALI's colour operators: torchvision's hue is a shift in HSV,
DALI's ``color_twist`` rotates in YIQ (~32 dB apart, DESIGN.md); in torch the
semantics are exactly torchvision's on CPU and GPU alike, and on 2 CPU cores
batched tensor ops cost less than DALI's per-sample operators (DESIGN.md).

All maths in float32 on (N, 3, H, W) in [0, 1]. Grayscale is ITU-R 601 luma
(0.2989, 0.587, 0.114) as in torchvision; contrast blends towards the mean luma
of each image, saturation towards each pixel's luma.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as tnf

from pipelines.recipe import ViewRecipe

LUMA = (0.2989, 0.587, 0.114)


def luma(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 1, H, W)."""
    return (LUMA[0] * x[:, 0:1] + LUMA[1] * x[:, 1:2] + LUMA[2] * x[:, 2:3])


def _col(v: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, 1, 1, 1)


def _blend(a: torch.Tensor, b: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    return (ratio * a + (1 - ratio) * b).clamp(0, 1)


def shift_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """RGB -> HSV, hue += shift (fraction of a turn), -> RGB, per image."""
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    # amax/amin, not max/min(dim): the latter also compute indices, ~10x slower on CPU.
    v = x.amax(dim=1)
    minc = x.amin(dim=1)
    delta = v - minc
    eq = delta == 0
    s = delta / v.clamp_min(1e-12)          # 0 where v == 0 (then delta == 0 too)
    d = delta + eq.to(x.dtype)              # 1 where grey, as torchvision does
    rc, gc, bc = (v - r) / d, (v - g) / d, (v - b) / d
    is_r = v == r
    is_g = (v == g) & ~is_r
    h = torch.where(is_r, bc - gc, torch.where(is_g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = h.masked_fill_(eq, 0.0)
    h = torch.fmod(h / 6.0 + 1.0, 1.0)
    h = torch.remainder(h + shift.reshape(-1, 1, 1), 1.0)
    # HSV -> RGB in closed form: channel n in (5, 3, 1) for (R, G, B) is
    # v - v*s*clamp(min(k, 4 - k), 0, 1) with k = (n + 6h) mod 6; the same
    # values as the six-sector table, without building and gathering from it.
    h6 = (h * 6.0).unsqueeze(1)
    # arange, not torch.tensor(.., device=cuda): a fill kernel, not a blocking copy
    n = torch.arange(5.0, 0.0, -2.0, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    k = torch.remainder(n + h6, 6.0)
    f = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return (v.unsqueeze(1) * (1.0 - s.unsqueeze(1) * f)).clamp_(0.0, 1.0)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, sigma_max: float) -> torch.Tensor:
    """On CPU only the images with sigma > 0 are convolved (the subset costs a
    host sync, which is free there, and saves 5x: 113 -> 23 ms for the ~half of
    64 views of 224 px that blur, on 2 cores); on a GPU the whole batch is, masked."""
    if x.device.type != "cpu":
        return _blur_all(x, sigma, sigma_max)
    idx = (sigma > 0).nonzero().squeeze(1)
    if len(idx) == 0:
        return x
    if len(idx) == len(x):
        return _blur_all(x, sigma, sigma_max)
    out = x.clone()
    out[idx] = _blur_all(x[idx], sigma[idx], sigma_max)
    return out


def _blur_all(x: torch.Tensor, sigma: torch.Tensor, sigma_max: float) -> torch.Tensor:
    """Per-image sigma (0 = no blur). Each image's kernel spans 2*ceil(3 sigma)+1
    pixels (recipe.blur_kernel_size) and is normalised over that window, with
    reflect padding, exactly as torchvision.gaussian_blur per image; the batch
    shares one window, sized from the recipe's ``sigma_max`` (static, so no
    device sync), with zeros outside each image's own window."""
    on = sigma > 0
    sig = sigma.clamp_min(1e-6).to(torch.float32)
    radius_each = torch.ceil(3 * sig)
    radius = math.ceil(3 * sigma_max)
    n, c, h, w = x.shape
    if radius >= min(h, w):
        raise ValueError(f"blur radius {radius} too large for {h}x{w} views (reflect padding)")
    offs = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float32)
    k = torch.exp(-0.5 * (offs[None] / sig[:, None]) ** 2)
    k = torch.where(offs.abs()[None] <= radius_each[:, None], k, torch.zeros_like(k))
    k = k / k.sum(dim=1, keepdim=True)                   # (N, K)
    k = k.repeat_interleave(c, dim=0)                     # (N*3, K)
    y = tnf.pad(x.reshape(1, n * c, h, w), (radius, radius, radius, radius), mode="reflect")
    y = tnf.conv2d(y, k[:, None, None, :], groups=n * c)  # along W
    y = tnf.conv2d(y, k[:, None, :, None], groups=n * c)  # along H
    y = y.reshape(n, c, h, w)
    return torch.where(_col(on), y, x)


def apply(x: torch.Tensor, p: dict[str, torch.Tensor], recipe: ViewRecipe) -> torch.Tensor:
    """x: (N, 3, H, W) float in [0, 1] after crop+resize; p: field -> (N, width).
    Ops the recipe never fires are skipped (decided from the recipe, not the data:
    no device-to-host sync in the hot loop)."""
    flip = _col(p["flip"][:, 0] > 0.5)
    x = torch.where(flip, x.flip(-1), x)
    if recipe.rotate:  # quarter turns counter-clockwise, per image (square views)
        turns = _col(p["rot"][:, 0])
        x = torch.where(turns == 1, x.rot90(1, (-2, -1)),
                        torch.where(turns == 2, x.rot90(2, (-2, -1)),
                                    torch.where(turns == 3, x.rot90(3, (-2, -1)), x)))
    b, c, s, h = (p["color"][:, k] for k in range(4))
    x = (x * _col(b)).clamp(0, 1)
    x = _blend(x, luma(x).mean(dim=(-3, -2, -1), keepdim=True), _col(c))
    x = _blend(x, luma(x), _col(s))
    if recipe.jitter_p > 0 and recipe.jitter[3] > 0:
        x = torch.where(_col(h != 0), shift_hue(x, h), x)
    gray = _col(p["gray"][:, 0] > 0.5)
    x = torch.where(gray, luma(x).expand_as(x), x)
    if recipe.blur_p > 0:
        x = gaussian_blur(x, p["blur"][:, 0], recipe.blur_sigma[1])
    if recipe.solarize_p > 0:
        sol = _col(p["solarize"][:, 0] > 0.5)
        x = torch.where(sol & (x >= 0.5), 1.0 - x, x)
    return x
