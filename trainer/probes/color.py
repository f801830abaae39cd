"""The colour target of the colour-information probe (AugSelf, Lee et al. 2021,
Sec. 1 and Fig. 1: how much colour information features keep as colour jitter
gets stronger): each image's joint HSV colour histogram.

Bins: 8 hue x 3 saturation x 3 value = 72, each image's histogram summing to 1.
Hue is binned in equal 45-degree sectors starting at red (0 degrees);
saturation and value in equal thirds of [0, 1]. The probe (trainer/probes/ridge.py)
regresses the histogram from the features and reports R^2 on the test split:
near 1 when the features determine the image's colour distribution linearly,
near 0 when they carry none of it.
"""

from __future__ import annotations

import torch

BINS = (8, 3, 3)  # hue, saturation, value


def rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    """(..., 3) RGB in [0, 1] -> (..., 3) HSV, hue in [0, 1) turns (the usual
    hexcone formula; grey pixels get hue 0 and saturation 0)."""
    r, g, b = rgb.unbind(-1)
    mx, _ = rgb.max(-1)
    mn, _ = rgb.min(-1)
    delta = mx - mn
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    h = torch.where(mx == r, ((g - b) / safe) % 6,
                    torch.where(mx == g, (b - r) / safe + 2, (r - g) / safe + 4))
    h = torch.where(delta > 0, h / 6, torch.zeros_like(h)) % 1.0
    s = torch.where(mx > 0, delta / torch.where(mx > 0, mx, torch.ones_like(mx)),
                    torch.zeros_like(mx))
    return torch.stack([h, s, mx], -1)


def histograms(images: torch.Tensor, bins: tuple[int, int, int] = BINS) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> (N, prod(bins)) float32 joint HSV histograms, rows
    summing to 1."""
    n = len(images)
    hsv = rgb_to_hsv(images.float().div(255)).reshape(n, -1, 3)
    sizes = torch.tensor(bins, device=images.device)
    idx = (hsv * sizes).long().clamp_(max=sizes - 1)           # per channel bin
    flat = (idx[..., 0] * bins[1] + idx[..., 1]) * bins[2] + idx[..., 2]
    k = bins[0] * bins[1] * bins[2]
    out = torch.zeros(n, k, device=images.device)
    out.scatter_add_(1, flat, torch.ones_like(flat, dtype=out.dtype))
    return out / hsv.shape[1]
