"""Compare a backend's views with reference.render given the emitted parameters."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from readback import psnr  # noqa: F401 - re-exported for the pipeline tests

from pipelines import reference
from pipelines.params import view
from pipelines.records import Records


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
