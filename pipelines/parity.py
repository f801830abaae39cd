"""How close a backend's views are to the definition: each emitted view against
reference.render(source image, the parameters emitted with it), as PSNR in dB on
8-bit levels, and the bounds each backend is held to.

One place for the bounds, read by tests/test_pipeline_agreement.py and by
``python -m tools.doctor`` (which checks a batch on whatever machine it runs on).
"""

from __future__ import annotations

import io

import numpy as np

# (min, 5th percentile, median) of the per-view PSNR over a batch, in dB; inf means
# every view exact. Measured over the 4 presets at 48/24 px on the tests' small raw
# dataset, one batch of 16 per preset (re-measured 2026-11-23 with fine hue bins):
# - torchvision renders with the reference ops themselves: exact.
# - dali-cpu: DALI's antialiased linear resize (the triangle filter of torchvision's
#   antialiased bilinear, its own implementation, rounded to uint8 before the colour
#   ops): measured min 37.8 (a 24 px SwAV view of a tiny crop across an object
#   edge), 5th percentile 50.2, median 58.
# - ffcv: OpenCV INTER_AREA, a box filter, not a triangle: measured min 34.9, 5th
#   percentile 42.3, median 54.2.
# - dali-gpu: below dali-cpu (nvJPEG and the GPU resize may differ by a level here
#   and there); earlier bounds (min 38, median 42) held on an H100 on the earlier
#   images; tighten once a GPU session prints its PSNRs on the fine-hue images.
BOUNDS = {"torchvision": (np.inf, np.inf, np.inf), "dali-cpu": (36.0, 47.0, 50.0),
          "dali-gpu": (34.0, 40.0, 42.0), "ffcv": (33.0, 40.0, 45.0)}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR of two uint8 images in dB; inf where they are equal."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def sources(data_dir) -> dict[int, np.ndarray]:
    """Every source image of a converted dataset's records, decoded: index -> HWC uint8."""
    from PIL import Image

    from pipelines.records import Records

    rec = Records(data_dir)
    out = {}
    for i in range(len(rec)):
        data, _, index = rec[i]
        out[index] = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    return out


def view_psnrs(batch, recipe, srcs: dict[int, np.ndarray]) -> np.ndarray:
    """(B, V) PSNR of each emitted view (``batch.raw``: the loader built with
    keep_raw) against the reference re-render from its emitted parameters."""
    from pipelines import reference
    from pipelines.params import view

    if batch.raw is None:
        raise ValueError("the batch has no raw views: build the loader with keep_raw=True")
    out = np.zeros((len(batch), recipe.num_views))
    params = {k: t.cpu() for k, t in batch.params.items()}  # the reference runs on the CPU
    for b, idx in enumerate(batch.index.tolist()):
        for v, vr in enumerate(recipe.views):
            want = reference.render(srcs[idx], view(params, b, v), vr)
            out[b, v] = psnr(batch.raw[v][b].numpy(), want)
    return out


def summary(psnrs: np.ndarray) -> tuple[float, float, float]:
    """(min, 5th percentile, median) of a batch's PSNRs, the figures BOUNDS bound."""
    # exact views are inf dB; numpy interpolates between two infs as inf - inf = nan,
    # where the limit is inf
    with np.errstate(invalid="ignore"):
        fig = [psnrs.min(), np.percentile(psnrs, 5), np.median(psnrs)]
    return tuple(float("inf") if np.isnan(x) else float(x) for x in fig)


def within(backend: str, psnrs: np.ndarray) -> bool:
    """Whether a batch's PSNRs meet ``backend``'s bounds (exact backends: every view)."""
    lo = BOUNDS[backend]
    if np.isinf(lo[0]):
        return bool(np.isinf(psnrs).all())
    return all(g >= b for g, b in zip(summary(psnrs), lo))
