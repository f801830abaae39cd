"""Every backend's views equal reference.render(source, emitted params) within a
stated tolerance, for every preset.

Tolerances (PSNR against the reference, 8-bit):
- torchvision: renders with the reference ops themselves: exact.
- dali-cpu: crop+resize is DALI's linear resize with antialiasing, the same
  triangle filter as torchvision's antialiased bilinear but its own
  implementation and a uint8 rounding before the colour ops; measured min 45 dB,
  median 57 dB. Bound: min >= 40 dB.
- ffcv: FFCV's resize_crop is OpenCV INTER_AREA, a box filter, not a triangle:
  measured min 26.5 dB, 5th percentile 33 dB, median 38-44 dB. Bound: min >= 25 dB,
  median >= 34 dB. That the *box* is exact despite the filter is checked
  separately: the emitted box matches better than the box moved by 2 pixels.
Colour, grayscale, blur and solarize run in torch for every backend
(pipelines/photometric.py) and match the torchvision reference to < 0.01 of an
8-bit level (test below); DALI's own colour operators are not used (YIQ hue).
"""

import dataclasses

import numpy as np
import pytest
import torch
from agreement import psnr, sources, view_psnrs
from conftest import backends_here

from pipelines import photometric, reference, sampling
from pipelines.build import LoaderConfig, build_loader
from pipelines.params import check, view
from pipelines.recipe import PRESETS, preset

# dali-gpu: assumed like dali-cpu (nvJPEG and the GPU resize may differ from the CPU
# ones by a level here and there); not yet measured: no GPU session so far.
BOUNDS = {"torchvision": (np.inf, np.inf), "dali-cpu": (40.0, 45.0), "dali-gpu": (38.0, 42.0),
          "ffcv": (25.0, 34.0)}


def _loader(data, backend, name, size=48, batch=16, seed=0, **kw):
    cfg = LoaderConfig(data=str(data), backend=backend, preset=name, size=size, small_size=24,
                       batch_size=batch, seed=seed, keep_raw=True, workers=2, **kw)
    return build_loader(cfg)


@pytest.mark.parametrize("backend", backends_here())
@pytest.mark.parametrize("name", list(PRESETS))
def test_views_match_reference(small_dataset, backend, name):
    loader = _loader(small_dataset, backend, name)
    batch = next(iter(loader))
    recipe = loader.recipe
    check(batch.params, len(batch), recipe.num_views)
    assert batch.views[0].is_contiguous(memory_format=torch.channels_last)
    ps = view_psnrs(batch, recipe, sources(small_dataset))
    lo_min, lo_median = BOUNDS[backend]
    assert ps.min() >= lo_min and np.median(ps) >= lo_median, (ps.min(), np.median(ps))
    # The normalised views are the raw ones, normalised.
    mean, std = torch.tensor(recipe.mean).view(3, 1, 1), torch.tensor(recipe.std).view(3, 1, 1)
    raw = batch.raw[0][0].permute(2, 0, 1).float() / 255
    torch.testing.assert_close(batch.views[0][0], (raw - mean) / std, atol=3e-2, rtol=0)


def _shifted(crop, dy, dx, h, w):
    c = crop.clone()
    c[0] += dy / h
    c[1] += dx / w
    return c


@pytest.mark.parametrize("backend", backends_here())
def test_emitted_box_is_the_one_applied(small_dataset, backend):
    """Geometry only: the emitted box beats the same box moved by 2 px."""
    loader = _loader(small_dataset, backend, "augself", batch=32)
    loader.recipe = dataclasses.replace(loader.recipe, views=tuple(
        dataclasses.replace(v, jitter_p=0, gray_p=0, blur_p=0) for v in loader.recipe.views))
    if hasattr(loader, "dataset"):
        loader.dataset.recipe = loader.recipe
    batch = next(iter(loader))
    srcs = sources(small_dataset)
    wins = total = 0
    for b, idx in enumerate(batch.index.tolist()):
        src = srcs[idx]
        H, W = src.shape[:2]
        for v, vr in enumerate(loader.recipe.views):
            p = view(batch.params, b, v)
            got = batch.raw[v][b].numpy()
            good = psnr(got, reference.render(src, p, vr))
            top, left, h, w = reference.box_pixels(p["crop"], H, W)
            for dy, dx in ((2, 0), (-2, 0), (0, 2), (0, -2)):
                if 0 <= top + dy and top + dy + h <= H and 0 <= left + dx and left + dx + w <= W:
                    q = dict(p, crop=_shifted(p["crop"], dy, dx, H, W))
                    total += 1
                    wins += good > psnr(got, reference.render(src, q, vr))
    assert total > 50 and wins / total >= 0.97, (wins, total)


def test_batched_photometric_equals_reference_ops():
    r = dataclasses.replace(preset("byol", 32).views[1], jitter_p=0.9, blur_p=0.6,
                            solarize_p=0.5, gray_p=0.3)
    x = torch.rand(64, 3, 32, 32)
    p = sampling.sample_rest(r, 0, 0, torch.arange(64), 0)
    y = photometric.apply(x, p, r)
    for i in range(64):
        z = reference.photometric(x[i], {k: t[i] for k, t in p.items()})
        assert (z - y[i]).abs().max() * 255 < 0.01
