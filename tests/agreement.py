"""Compare a backend's views with reference.render given the emitted parameters."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from readback import psnr  # noqa: F401 - re-exported for the pipeline tests

from pipelines import reference
from pipelines.params import view
from pipelines.records import Records


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


def sources(data_dir) -> dict[int, np.ndarray]:
    rec = Records(data_dir)
    out = {}
    for i in range(len(rec)):
        data, _, index = rec[i]
        out[index] = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    return out


def view_psnrs(batch, recipe, srcs) -> np.ndarray:
    """(B, V) PSNR of each emitted view against the reference re-render."""
    out = np.zeros((len(batch), recipe.num_views))
    params = {k: t.cpu() for k, t in batch.params.items()}  # the reference runs on the CPU
    for b, idx in enumerate(batch.index.tolist()):
        for v, vr in enumerate(recipe.views):
            want = reference.render(srcs[idx], view(params, b, v), vr)
            out[b, v] = psnr(batch.raw[v][b].numpy(), want)
    return out
