"""Every backend's views equal reference.render(source, emitted params) within a
stated tolerance, for every preset.

Tolerances: PSNR against the reference, 8-bit (min, 5th percentile, median of a
batch), pipelines/parity.py BOUNDS with how each was measured; torchvision is exact,
dali-cpu differs by DALI's own antialiased resize, ffcv by OpenCV's box filter. That
the *box* is exact despite the filter is checked separately: with the colour ops
off, the emitted box matches better than the box moved by 1 pixel.
Colour, grayscale, blur and solarize: on a GPU they run batched in torch
(pipelines/photometric.py), which matches the torchvision reference to < 0.01 of
an 8-bit level (test below); on a CPU device dali-cpu and ffcv run the numba
kernel (pipelines/photometric_cpu.py), at most 1 level off on ~0.002% of values
(test below). DALI's own colour operators are not used (YIQ hue).
"""

import dataclasses

import numpy as np
import pytest
import torch
from agreement import noise_and_ramps, psnr, reference_view, sources, view_psnrs
from conftest import every_backend

from pipelines import photometric, reference, sampling
from pipelines.build import LoaderConfig, build_loader
from pipelines.params import check, identity, view
from pipelines.parity import BOUNDS
from pipelines.recipe import PRESETS, preset

# (min, 5th percentile, median) in dB: pipelines/parity.py, with their provenance.


def _loader(data, backend, name, size=48, batch=16, seed=0, **kw):
    cfg = LoaderConfig(data=str(data), backend=backend, preset=name, size=size, small_size=24,
                       batch_size=batch, seed=seed, keep_raw=True, workers=2, **kw)
    return build_loader(cfg)


@pytest.mark.parametrize("backend", every_backend())
@pytest.mark.parametrize("name", list(PRESETS))
def test_views_match_reference(small_dataset, backend, name):
    loader = _loader(small_dataset, backend, name)
    batch = next(iter(loader))
    recipe = loader.recipe
    check(batch.params, len(batch), recipe.num_views)
    assert batch.views[0].is_contiguous(memory_format=torch.channels_last)
    ps = view_psnrs(batch, recipe, sources(small_dataset))
    lo_min, lo_p5, lo_median = BOUNDS[backend]
    if np.isinf(lo_min):  # exact: every view
        assert np.isinf(ps).all(), ps.min()
    else:
        got = (ps.min(), np.percentile(ps, 5), np.median(ps))
        assert got[0] >= lo_min and got[1] >= lo_p5 and got[2] >= lo_median, got
    # The normalised views are the raw ones, normalised.
    mean, std = torch.tensor(recipe.mean).view(3, 1, 1), torch.tensor(recipe.std).view(3, 1, 1)
    raw = batch.raw[0][0].permute(2, 0, 1).float() / 255  # raw views are on the CPU
    torch.testing.assert_close(batch.views[0][0].cpu().float(), (raw - mean) / std, atol=3e-2,
                               rtol=0)


def _shifted(crop, dy, dx, h, w):
    c = crop.clone()
    c[0] += dy / h
    c[1] += dx / w
    return c


# Geometry only (crop, resize, flip): every colour op off, as a recipe spec
# (pipelines/recipe.from_spec) the loader is built from, so every stage of every
# backend (DALI's graph and Finisher, FFCV's op, torchvision's workers) sees it.
GEOMETRY_ONLY = {"all": {"jitter_p": 0.0, "gray_p": 0.0, "blur_p": 0.0, "solarize_p": 0.0}}

# dB by which the emitted box must beat every box moved by 1 px. Measured 2026-11-30
# (augself at 48 px, batch 32 of small_dataset, seed 0; 241 comparisons): smallest
# lead ffcv 7.4 dB (OpenCV's box filter), dali-cpu 17.1 dB, torchvision exact (inf);
# dali-gpu not measured (no GPU here; the same DALI resize). Bound: under half of
# the smallest. A box applied half a pixel off the emitted one ties with the box
# moved 1 px towards it: DALI's region of interest moved by 0.5 px measured a
# smallest lead of -4.4 dB, by 0.25 px 2.9 dB (the old test, 2 px moves and 97% of
# them won, passed the 0.5 px one).
BOX_LEAD_DB = 3.0


@pytest.mark.parametrize("backend", every_backend())
def test_emitted_box_is_the_one_applied(small_dataset, backend):
    """Geometry only: the emitted box beats the same box moved by 1 px, in every
    direction, on every view, by BOX_LEAD_DB. The views and the reference
    re-render are compared like with like: no colour op was drawn (asserted), so
    what differs is the box alone."""
    loader = _loader(small_dataset, backend, "augself", batch=32, recipe=GEOMETRY_ONLY)
    assert all(v.jitter_p == v.gray_p == v.blur_p == v.solarize_p == 0
               for v in loader.recipe.views)
    batch = next(iter(loader))
    srcs = sources(small_dataset)
    params = {k: t.cpu() for k, t in batch.params.items()}  # the reference runs on the CPU
    untouched = identity(len(batch), loader.recipe.num_views)
    for k in ("color", "gray", "blur", "solarize"):  # no colour op on any view
        assert torch.equal(params[k], untouched[k]), (k, params[k])
    leads = []
    for b, idx in enumerate(batch.index.tolist()):
        src = srcs[idx]
        H, W = src.shape[:2]
        for v, vr in enumerate(loader.recipe.views):
            p = view(params, b, v)
            got = batch.raw[v][b].numpy()
            good = psnr(got, reference.render(src, p, vr))
            top, left, h, w = reference.box_pixels(p["crop"], H, W)
            for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                if 0 <= top + dy and top + dy + h <= H and 0 <= left + dx and left + dx + w <= W:
                    q = dict(p, crop=_shifted(p["crop"], dy, dx, H, W))
                    leads.append(good - psnr(got, reference.render(src, q, vr)))
    # 241 boxes moved 1 px stay inside their source (measured)
    assert len(leads) > 200 and min(leads) >= BOX_LEAD_DB, (len(leads), min(leads))


def test_batched_photometric_equals_reference_ops():
    r = dataclasses.replace(preset("byol", 32).views[1], jitter_p=0.9, blur_p=0.6,
                            solarize_p=0.5, gray_p=0.3, rotate=True)
    x = torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    p = sampling.sample_rest(r, 0, 0, torch.arange(64), 0)
    assert all((p["rot"] == k).sum() >= 8 for k in range(4))  # every turn under test
    y = photometric.apply(x, p, r)
    for i in range(64):
        z = reference.photometric(x[i], {k: t[i] for k, t in p.items()})
        assert (z - y[i]).abs().max() * 255 < 0.01


# Values (of 96 views x 40 x 40 x 3 = 460,800) the CPU kernel may have 1 level off
# the reference ops. Measured 2026-11-30 (AMD EPYC with AVX-512, numba 0.68.1) on
# this test's inputs with noise_and_ramps and sample_rest seeds 0-5: 8, 5, 8, 7, 5,
# 3 values, at most 8 (1.7e-5; seed 0, the one tested, is 8), never 2 levels.
# Bound: 5x the largest, 40 (8.7e-5), for another CPU's roundoff (fused
# multiply-adds, vector width reorders the sums). A kernel 1 level off on 1 value
# in 200 (2,304 values) or even in 10,000 (46) fails.
CPU_KERNEL_MAX_OFF = 40


def test_cpu_kernel_equals_reference_ops():
    """photometric_cpu (the CPU stage of dali-cpu and ffcv) against the reference
    ops rounded to uint8. Bound: no pixel off by more than 1 level, and at most
    CPU_KERNEL_MAX_OFF of the 460,800 values off at all. Why not exact: the kernel
    sums the mean luma and the blur taps in another order and fuses multiply-adds
    (float32 roundoff ~1e-6), which moves a value sitting within ~1e-6 of a
    rounding boundary (k + 0.5)/255 to the next level."""
    from pipelines import photometric_cpu

    r = dataclasses.replace(preset("byol", 40).views[1], jitter_p=0.9, blur_p=0.6,
                            solarize_p=0.5, gray_p=0.3, rotate=True)
    n = 96
    crops = noise_and_ramps(n, 40)
    p = sampling.sample_rest(r, 0, 0, torch.arange(n), 0)
    out = np.empty_like(crops)
    photometric_cpu.render_batch(crops, photometric_cpu.rest_of(p), out)
    diff = []
    for i in range(n):
        _, want = reference_view(crops[i], {k: t[i] for k, t in p.items()})
        diff.append(np.abs(want.astype(int) - out[i].astype(int)))
    diff = np.stack(diff)
    # Every op fired somewhere in the sample, so each one is under test.
    assert p["gray"].sum() > 10 and (p["blur"] > 0).sum() > 30 and p["solarize"].sum() > 30
    assert (p["color"][:, 3] != 0).sum() > 60 and p["flip"].sum() > 30
    assert all((p["rot"] == k).sum() > 12 for k in range(4))
    off = int((diff > 0).sum())
    assert diff.max() <= 1 and off <= CPU_KERNEL_MAX_OFF, (diff.max(), off, diff.size)


def test_cpu_kernel_in_place_equals_out_of_place():
    """FFCV's op renders each crop in its own slot: src and out the same array."""
    from pipelines import photometric_cpu

    r = dataclasses.replace(preset("augself", 32).views[0], rotate=True)
    crops = noise_and_ramps(16, 32, seed=1)
    rest = photometric_cpu.rest_of(sampling.sample_rest(r, 0, 0, torch.arange(16), 0))
    out = np.empty_like(crops)
    photometric_cpu.render_batch(crops, rest, out)
    photometric_cpu.render_batch(crops, rest, crops)
    assert np.array_equal(out, crops)


@pytest.mark.parametrize("name", [*PRESETS, "augself+rot"])
def test_numba_draws_equal_torch_draws(name):
    """FFCV's op and the GPU stage draw each view's row in numba; sample_rest draws
    in torch: the same numbers, bit for bit, so a backend may draw them on either
    side."""
    from pipelines import photometric_cpu
    from pipelines.recipe import with_rotated_views

    recipe = preset(name.removesuffix("+rot"), 32)
    if name.endswith("+rot"):
        recipe = with_rotated_views(recipe, 2, 16)
    idx = torch.arange(0, 3000, 7)
    for epoch in (0, 5):
        for v, vr in enumerate(recipe.views):
            want = photometric_cpu.rest_of(sampling.sample_rest(vr, 11, epoch, idx, v))
            row = photometric_cpu.recipe_row(vr)
            got = np.zeros_like(want)
            for j, i in enumerate(idx.tolist()):
                photometric_cpu.draw_rest(row, 11, epoch, i, v, got[j])
            assert np.array_equal(got, want)
