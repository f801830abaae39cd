"""The oracle itself (pipelines/reference.py), op by op, against the definitions
written out in numpy: every backend is held to reference.render, so a wrong
reference would make every backend wrong in the same way and every agreement
test pass. Each op alone (the other parameters at identity), then all of them in
DESIGN.md's order; float64 numpy against the float32 torchvision ops."""

import colorsys
import math

import numpy as np
import pytest
import torch

from pipelines import reference
from pipelines.params import IDENTITY
from pipelines.recipe import preset

LUMA = np.array([0.2989, 0.587, 0.114])  # torchvision's rgb_to_grayscale (ITU-R 601, 0.299 cut)


def _img(seed: int = 0, s: int = 12) -> torch.Tensor:
    return torch.rand(3, s, s, generator=torch.Generator().manual_seed(seed))


def _p(**changed) -> dict[str, torch.Tensor]:
    p = {k: torch.tensor(v) for k, v in IDENTITY.items()}
    p.update({k: torch.tensor(v, dtype=torch.float32) for k, v in changed.items()})
    return p


def _gray(x):
    return np.tensordot(LUMA, x, axes=1)[None].repeat(3, 0)


def _blur(x, sigma):
    """Separable Gaussian, 2 ceil(3 sigma) + 1 taps normalised, reflect padding (no
    edge repeat), along W then H."""
    r = math.ceil(3 * sigma)
    taps = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    taps /= taps.sum()
    for axis in (2, 1):
        pad = [(0, 0)] * 3
        pad[axis] = (r, r)
        xp = np.pad(x, pad, mode="reflect")
        n = x.shape[axis]
        x = sum(t * np.take(xp, range(i, i + n), axis=axis) for i, t in enumerate(taps))
    return x


def _hue(x, shift):
    out = np.empty_like(x)
    for i in range(x.shape[1]):
        for j in range(x.shape[2]):
            h, s, v = colorsys.rgb_to_hsv(*x[:, i, j])
            out[:, i, j] = colorsys.hsv_to_rgb((h + shift) % 1.0, s, v)
    return out


def _naive(x, flip=0, rot=0, color=(1, 1, 1, 0), gray=0, blur=0.0, solarize=0):
    """DESIGN.md's order: flip, rotate, brightness, contrast, saturation, hue,
    grayscale, blur, solarize; each clamped to [0, 1] where torchvision clamps."""
    x = np.asarray(x, np.float64)
    if flip:
        x = x[:, :, ::-1]
    x = np.rot90(x, rot, axes=(1, 2))            # counter-clockwise, as torch.rot90
    b, c, s, h = color
    x = np.clip(x * b, 0, 1)
    m = _gray(x)[0].mean()                       # contrast: towards the mean luma
    x = np.clip(c * x + (1 - c) * m, 0, 1)
    x = np.clip(s * x + (1 - s) * _gray(x), 0, 1)  # saturation: towards each pixel's luma
    if h:
        x = _hue(x, h)
    if gray:
        x = _gray(x)
    if blur:
        x = _blur(x, blur)
    if solarize:
        x = np.where(x >= 0.5, 1 - x, x)
    return x


CASES = {
    "flip": dict(flip=1), "rot1": dict(rot=1), "rot2": dict(rot=2), "rot3": dict(rot=3),
    "brightness": dict(color=(1.4, 1, 1, 0)), "contrast": dict(color=(1, 0.55, 1, 0)),
    "saturation": dict(color=(1, 1, 1.6, 0)), "hue": dict(color=(1, 1, 1, 0.27)),
    "gray": dict(gray=1), "blur": dict(blur=0.9), "solarize": dict(solarize=1),
    "all": dict(flip=1, rot=3, color=(0.8, 1.3, 0.6, -0.15), blur=0.6, solarize=1),
    "all_gray": dict(flip=1, rot=1, color=(1.2, 0.7, 1.4, 0.1), gray=1, blur=1.3),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_op_and_their_order_are_the_written_out_definitions(name):
    kw = CASES[name]
    p = _p(flip=(float(kw.get("flip", 0)),), rot=(float(kw.get("rot", 0)),),
           color=tuple(map(float, kw.get("color", (1, 1, 1, 0)))),
           gray=(float(kw.get("gray", 0)),), blur=(float(kw.get("blur", 0.0)),),
           solarize=(float(kw.get("solarize", 0)),))
    x = _img(sum(map(ord, name)))
    got = reference.photometric(x, p).numpy()
    want = _naive(x.numpy(), **kw)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=2e-6 if "hue" not in name and
                               "all" not in name else 2e-5, rtol=0, err_msg=name)


def test_identity_parameters_change_nothing():
    x = _img(3)
    assert torch.equal(reference.photometric(x, _p()), x)


def test_box_pixels_rounds_each_fraction_of_its_side():
    assert reference.box_pixels(torch.tensor([0.25, 0.5, 0.5, 0.25]), 40, 80) == (10, 40, 20, 20)
    # 0.065 x 40 = 2.6 -> 3 (not truncated); 0.1 x 80 = 8; 0.4125 x 40 = 16.5 -> 16 (half
    # to even, Python's round); 0.7 x 80 = 56
    assert reference.box_pixels(torch.tensor([0.065, 0.1, 0.4125, 0.7]), 40, 80) == (3, 8, 16, 56)


def test_crop_resize_takes_the_box_it_is_given():
    """Quadrants of four colours: the top-right quadrant's box at its own size is
    that quadrant, exactly (a resize to the same size moves nothing)."""
    src = torch.zeros(3, 20, 30)
    src[0, :10, :15], src[1, :10, 15:], src[2, 10:, :15] = 1.0, 1.0, 1.0
    src[:, 10:, 15:] = 0.5
    got = reference.crop_resize(src, torch.tensor([0.0, 0.5, 0.5, 0.5]), 10)
    assert got.shape == (3, 10, 10)
    assert not torch.equal(src[:, :10, 15:25], src[:, :10, 5:15])
    torch.testing.assert_close(reference.crop_resize(src, torch.tensor([0.0, 0.5, 0.5, 1 / 3]),
                                                     10), src[:, :10, 15:25], rtol=0, atol=1e-6)
    whole = reference.crop_resize(src, torch.tensor([0.0, 0.0, 1.0, 1.0]), 20)
    assert whole.shape == (3, 20, 20)
    # downscaled whole image: each quadrant keeps its colour away from the seams
    torch.testing.assert_close(whole[:, 2, 2], torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(whole[:, 17, 17], torch.tensor([0.5, 0.5, 0.5]))


def test_render_is_the_rounded_uint8_of_the_view():
    g = np.random.default_rng(4)
    src = g.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    vr = preset("augself", 24).views[0]
    assert np.array_equal(reference.render(src, _p(), vr), src)  # full crop at its own size
    p = _p(color=(1.3, 1.0, 1.0, 0.0), solarize=(1.0,))
    got = reference.render(src, p, vr)
    x = src.astype(np.float64).transpose(2, 0, 1) / 255
    want = np.round(np.clip(_naive(x, color=(1.3, 1, 1, 0), solarize=1), 0, 1) * 255)
    assert got.dtype == np.uint8 and got.shape == (24, 24, 3)
    # float32 against float64: a level k x 1.3 lands on a half level (k = 5, 15, ...)
    # and rounds either way: 1 level, on 2.3% of the values here (1 level in 10 of
    # the inputs lands there); a wrong rounding or scale is off everywhere
    assert np.abs(got.astype(int) - want.transpose(1, 2, 0).astype(int)).max() <= 1
    assert (got.astype(int) != want.transpose(1, 2, 0)).mean() < 0.05


def test_crop_resize_filters_before_it_downscales():
    """torchvision's RandomResizedCrop resizes with antialiasing: columns of which
    every third is lit (mean 1/3) shrunk 4x are within 0.04 of their mean
    everywhere; plain bilinear sampling lands on lit or dark columns by phase
    (off by 0.35 here)."""
    xx = torch.arange(40).expand(40, 40)
    stripes = (xx % 3 == 0).float().expand(3, 40, 40)
    small = reference.crop_resize(stripes, torch.tensor([0.0, 0.0, 1.0, 1.0]), 10)
    assert (small - stripes.mean()).abs().max() < 0.1, small[0]
