"""Compare a backend's views with reference.render given the emitted parameters."""

from __future__ import annotations

import numpy as np

from pipelines import reference

# re-exported for the pipeline tests: the comparison the doctor makes too
from pipelines.parity import psnr, sources, view_psnrs  # noqa: F401


def noise_and_ramps(n: int, size: int, seed: int = 0) -> np.ndarray:
    """uint8 crops (n, size, size, 3) for photometric kernels: half noise (every
    pixel a new hue), half smooth ramps (blur and contrast matter)."""
    g = np.random.default_rng(seed)
    crops = g.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    ramp = np.cumsum(g.integers(0, 9, (n // 2, size, size, 3)), axis=1)
    crops[: n // 2] = (ramp % 256).astype(np.uint8)
    return crops


def reference_view(crop: np.ndarray, p: dict):
    """reference.photometric of one uint8 HWC crop with one view's parameters
    (field -> (width,)): (float CHW in [0, 1], the same rounded to uint8 HWC)."""
    import torch

    x = torch.from_numpy(crop).permute(2, 0, 1).float() / 255
    z = reference.photometric(x, p).clamp(0, 1)
    return z, (z * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


