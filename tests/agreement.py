"""Compare a backend's views with reference.render given the emitted parameters."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from pipelines import reference
from pipelines.params import view
from pipelines.records import Records


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


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
    for b, idx in enumerate(batch.index.tolist()):
        for v, vr in enumerate(recipe.views):
            want = reference.render(srcs[idx], view(batch.params, b, v), vr)
            out[b, v] = psnr(batch.raw[v][b].numpy(), want)
    return out
