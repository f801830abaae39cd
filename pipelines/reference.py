"""The executable definition of a view: ``render(source, params, view_recipe)``.

Plain per-image torch / torchvision code, written for clarity, not speed. Every
backend's output is tested against it given the parameters the backend emitted.
Order (DESIGN.md): crop box -> resize -> flip -> rotate -> brightness -> contrast ->
saturation -> hue -> grayscale -> blur -> solarize (normalisation is left to
the Batch). Arithmetic is float32 in [0, 1] from the resize on; the result is
rounded to uint8.
"""

from __future__ import annotations

import numpy as np
import torch
import torchvision.transforms.v2.functional as F

from pipelines.recipe import ViewRecipe, blur_kernel_size


def box_pixels(crop: torch.Tensor, height: int, width: int) -> tuple[int, int, int, int]:
    """Schema crop field (y0, x0, h, w relative) -> (top, left, h, w) in pixels."""
    y0, x0, h, w = (float(c) for c in crop)
    return round(y0 * height), round(x0 * width), round(h * height), round(w * width)


def crop_resize(src: torch.Tensor, crop: torch.Tensor, size: int) -> torch.Tensor:
    """(3, H, W) float -> (3, size, size): bilinear with antialiasing, like
    torchvision's RandomResizedCrop."""
    top, left, h, w = box_pixels(crop, src.shape[-2], src.shape[-1])
    return F.resized_crop(src, top, left, h, w, [size, size],
                          interpolation=F.InterpolationMode.BILINEAR, antialias=True)


def photometric(x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    """Everything after the geometry, on (3, S, S) float in [0, 1]."""
    if float(p["flip"][0]) > 0.5:
        x = F.horizontal_flip(x)
    turns = int(p["rot"][0])  # quarter turns counter-clockwise (every view has the field)
    if turns:
        x = torch.rot90(x, turns, dims=(-2, -1))
    b, c, s, h = (float(v) for v in p["color"])
    x = F.adjust_brightness(x, b)
    x = F.adjust_contrast(x, c)
    x = F.adjust_saturation(x, s)
    if h != 0.0:
        x = F.adjust_hue(x, h)
    if float(p["gray"][0]) > 0.5:
        x = F.rgb_to_grayscale(x, num_output_channels=3)
    sigma = float(p["blur"][0])
    if sigma > 0:
        k = blur_kernel_size(sigma)
        x = F.gaussian_blur(x, [k, k], [sigma, sigma])
    if float(p["solarize"][0]) > 0.5:
        x = F.solarize(x, 0.5)
    return x


def render(source: np.ndarray | torch.Tensor, params: dict[str, torch.Tensor],
           recipe: ViewRecipe) -> np.ndarray:
    """source: uint8 (H, W, 3); params: field -> (width,) for one view.
    Returns the view as uint8 (size, size, 3)."""
    src = torch.as_tensor(np.array(source)).permute(2, 0, 1).float() / 255.0
    x = photometric(crop_resize(src, params["crop"], recipe.size), params)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
