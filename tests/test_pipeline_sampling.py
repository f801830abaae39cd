"""Parameter distributions, rates, reproducibility, sharding and decode-once."""

import math

import numpy as np
import pytest
import torch
from conftest import every_backend
from scipy import stats
from torchvision.transforms import v2

from pipelines.build import LoaderConfig, build_loader
from pipelines.recipe import preset
from pipelines.sampling import crop_args, crop_box, sample_rest

N_DRAWS = 4000


def _tv_boxes(h, w, vr, n):
    torch.manual_seed(0)
    img = torch.zeros(3, h, w)
    return np.array([v2.RandomResizedCrop.get_params(img, list(vr.scale), list(vr.ratio))
                     for _ in range(n)])


def _area_logratio(boxes, h, w):
    boxes = np.asarray(boxes, dtype=float)
    return boxes[:, 2] * boxes[:, 3] / (h * w), np.log(boxes[:, 3] / boxes[:, 2])


@pytest.mark.parametrize("name,hw", [("augself", (375, 500)), ("simclr", (120, 160)),
                                     ("swav", (375, 500))])
def test_crop_sampler_matches_torchvision(name, hw):
    h, w = hw
    for v, vr in enumerate(preset(name).views[:3]):
        ours = [crop_box(h, w, *crop_args(vr), 0, 0, i, v) for i in range(N_DRAWS)]
        a1, r1 = _area_logratio(ours, h, w)
        a2, r2 = _area_logratio(_tv_boxes(h, w, vr, N_DRAWS), h, w)
        assert stats.ks_2samp(a1, a2).pvalue > 1e-3
        assert stats.ks_2samp(r1, r2).pvalue > 1e-3
        # The position: top and left each uniform over the places the box fits, as
        # torchvision's, and drawn independently (a left taken from top's random
        # slot, or left = 0, fails here; the area and ratio tests cannot see it).
        ours, theirs = np.asarray(ours, dtype=float), _tv_boxes(h, w, vr, N_DRAWS)
        for axis, side in ((0, h), (1, w)):  # 0: top, 1: left
            for boxes in (ours, theirs):
                room = boxes[:, 2 + axis] < side - 20  # a box with room to move
                pos = boxes[room, axis] / (side - boxes[room, 2 + axis])
                assert stats.kstest(pos, "uniform").pvalue > 1e-3, (axis, boxes is ours)
            assert stats.ks_2samp(ours[:, axis], theirs[:, axis]).pvalue > 1e-3, axis
        room = (ours[:, 2] < h - 20) & (ours[:, 3] < w - 20)
        fy = ours[room, 0] / (h - ours[room, 2])
        fx = ours[room, 1] / (w - ours[room, 3])
        # uncorrelated: |r| under 4 standard errors of a zero correlation
        assert abs(np.corrcoef(fy, fx)[0, 1]) < 4 / math.sqrt(room.sum())


def _rate_ok(flags, p):
    n = len(flags)
    return abs(flags.mean() - p) <= 3 * math.sqrt(max(p * (1 - p), 1e-12) / n) + 1e-12


def test_rates_and_uniform_factors():
    idx = torch.arange(N_DRAWS)
    for vr in preset("byol").views:
        p = sample_rest(vr, 7, 3, idx, 1)
        jittered = (p["color"] != torch.tensor([1.0, 1, 1, 0])).any(dim=1)
        assert _rate_ok(p["flip"][:, 0].numpy(), vr.flip_p)
        assert _rate_ok(jittered.float().numpy(), vr.jitter_p)
        assert _rate_ok(p["gray"][:, 0].numpy(), vr.gray_p)
        assert _rate_ok((p["blur"][:, 0] > 0).float().numpy(), vr.blur_p)
        assert _rate_ok(p["solarize"][:, 0].numpy(), vr.solarize_p)
        for k, (lo, hi) in enumerate(vr.color_ranges()):
            x = p["color"][jittered, k].numpy()
            assert stats.kstest(x, "uniform", args=(lo, hi - lo)).pvalue > 1e-3
        lo, hi = vr.blur_sigma
        s = p["blur"][p["blur"][:, 0] > 0, 0].numpy()
        assert stats.kstest(s, "uniform", args=(lo, hi - lo)).pvalue > 1e-3
        # Skipped jitter reports exactly the identity.
        assert torch.equal(p["color"][~jittered], torch.tensor([[1.0, 1, 1, 0]]).expand(
            int((~jittered).sum()), 4))


def _epoch(loader, epoch):
    """One epoch's indices, parameters and raw first views, on the CPU (the loader's
    own device may be a GPU)."""
    loader.set_epoch(epoch)
    batches = list(loader)
    index = torch.cat([b.index for b in batches]).cpu()
    params = {k: torch.cat([b.params[k] for b in batches]).cpu() for k in batches[0].params}
    raw = torch.cat([b.raw[0] for b in batches]) if batches[0].raw else None
    return index, params, raw


def _cfg(data, backend, **kw):
    base = dict(data=str(data), backend=backend, preset="augself", size=32, batch_size=25,
                workers=2, keep_raw=True)
    return LoaderConfig(**{**base, **kw})


@pytest.mark.parametrize("backend", every_backend())
def test_loader_crops_follow_torchvision_and_differ_across_views_and_epochs(small_dataset,
                                                                           backend):
    loader = build_loader(_cfg(small_dataset, backend))
    crops = []
    first = None
    for e in range(5):  # 200 images x 2 views x 5 epochs = 2000 draws
        index, params, _ = _epoch(loader, e)
        order = torch.argsort(index)
        crops.append(params["crop"][order].reshape(-1, 4).numpy())
        views_differ = (params["crop"][:, 0] != params["crop"][:, 1]).any(dim=1).float().mean()
        assert views_differ > 0.99
        if first is None:
            first = params["crop"][order]
        else:
            assert (first != params["crop"][order]).any(dim=-1).float().mean() > 0.99
    crops = np.concatenate(crops)
    assert len(crops) == 2000
    h, w = 120, 160
    boxes = np.stack([crops[:, 0] * h, crops[:, 1] * w, crops[:, 2] * h, crops[:, 3] * w], 1)
    assert np.allclose(boxes, boxes.round(), atol=1e-3)  # whole-pixel boxes, in range
    assert (crops >= 0).all() and (crops[:, 0] + crops[:, 2] <= 1 + 1e-6).all()
    a1, r1 = _area_logratio(boxes.round(), h, w)
    a2, r2 = _area_logratio(_tv_boxes(h, w, preset("augself").views[0], 2000), h, w)
    assert stats.ks_2samp(a1, a2).pvalue > 1e-3
    assert stats.ks_2samp(r1, r2).pvalue > 1e-3


@pytest.mark.parametrize("backend", every_backend())
def test_same_seed_same_output_other_seed_differs(small_dataset, backend):
    runs = []
    for seed in (3, 3, 4):
        loader = build_loader(_cfg(small_dataset, backend, seed=seed))
        runs.append(_epoch(loader, 1))
    (i1, p1, x1), (i2, p2, x2), (i3, p3, x3) = runs
    assert torch.equal(i1, i2) and torch.equal(x1, x2)
    assert all(torch.equal(p1[k], p2[k]) for k in p1)
    assert not torch.equal(p1["crop"], p3["crop"]) and not torch.equal(x1, x3)


@pytest.mark.parametrize("backend", every_backend())
def test_two_shards_cover_every_index_once(small_dataset, backend):
    seen = []
    for rank in (0, 1):
        loader = build_loader(_cfg(small_dataset, backend, rank=rank, world=2, drop_last=False,
                                   batch_size=32))
        index, _, _ = _epoch(loader, 2)
        assert len(loader) == 4  # 100 per shard: 3 full batches + one of 4
        seen.append(index)
    allidx = torch.cat(seen).sort().values
    assert torch.equal(allidx, torch.arange(200))


@pytest.mark.dali
def test_dali_graph_decodes_once_whatever_the_views(small_dataset):
    """The built graph holds one decoder node for 2 or 8 views (swav): the V
    resizes read the same decoded image."""
    from collections import Counter

    from pipelines.loader_dali import build_pipeline

    for name, views in (("augself", 2), ("swav", 8)):
        recipe = preset(name, 32, 16)
        assert recipe.num_views == views
        pipe = build_pipeline(lambda: None, recipe, 4, None, 1)
        kinds = Counter(type(op._op).__name__ for op in pipe._ops)
        assert kinds["Image"] == 1 and kinds["Resize"] == views, kinds
        del pipe


def test_torchvision_worker_decodes_once(small_dataset, monkeypatch):
    import PIL.Image

    calls = []
    real = PIL.Image.open
    # The worker decodes through pipelines.records.open_rgb, i.e. PIL.Image.open.
    monkeypatch.setattr(PIL.Image, "open", lambda *a, **k: calls.append(1)
                        or real(*a, **k))
    loader = build_loader(_cfg(small_dataset, "torchvision", preset="swav", workers=0,
                               batch_size=8))
    batch = next(iter(loader))
    assert len(batch.views) == 8 and len(calls) == 8  # 8 images, 8 views each, 8 decodes


@pytest.mark.ffcv
def test_ffcv_op_decodes_once_whatever_the_views(tmp_path, monkeypatch):
    """Count the JPEG decodes FFCV's op makes over a whole epoch: one per image for
    2 views (augself) and for 8 (swav). The count lives in an array the compiled
    op reaches by address (as the op reads its epoch); one thread, so no race."""
    pytest.importorskip("ffcv")
    import ffcv.libffcv
    import numba

    from pipelines import loader_ffcv
    from pipelines.loader_ffcv import _address_as_pointer
    from tools import convert_dataset, make_synthetic

    make_synthetic.generate(tmp_path / "img", (64, 48), 16, 0, seed=3, quiet=True)
    assert convert_dataset.main([str(tmp_path / "img"), "--split", "train", "--out",
                                 str(tmp_path / "conv"), "--quiet"]) == 0  # jpg .beton
    count = np.zeros(1, dtype=np.int64)
    addr = count.ctypes.data
    original = ffcv.libffcv.imdecode
    # The op's kernels are compiled once per process (loader_ffcv._shared_kernels):
    # set them aside so that each loader here compiles the counting decoder, and
    # restore them after (a cached counting kernel would write to freed memory).
    saved = loader_ffcv._SHARED.pop("kernels", None)
    try:
        for name, views in (("augself", 2), ("swav", 8)):
            real = numba.njit(original)

            def counting(source, dst, sh, sw, ch, cw, ox, oy, num, den, crop, flip,
                         real=real):
                numba.carray(_address_as_pointer(addr), (1,), np.int64)[0] += 1
                return real(source, dst, sh, sw, ch, cw, ox, oy, num, den, crop, flip)

            monkeypatch.setattr(ffcv.libffcv, "imdecode", counting)
            loader_ffcv._SHARED.pop("kernels", None)
            count[0] = 0
            loader = build_loader(_cfg(tmp_path / "conv", "ffcv", preset=name, size=24,
                                       small_size=12, batch_size=8, workers=1,
                                       keep_raw=False))
            loader.set_epoch(0)
            batches = list(loader)
            assert len(batches) == 2 and len(batches[0].views) == views
            assert count[0] == 16, (name, count[0])
    finally:
        loader_ffcv._SHARED.pop("kernels", None)
        if saved is not None:
            loader_ffcv._SHARED["kernels"] = saved


def _lowbias32(x):
    """Chris Wellons' lowbias32, written out on Python ints (a naive reference)."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def _naive_uniform(seed, epoch, index, view, slot):
    h = _lowbias32(seed & 0xFFFFFFFF)
    for key in (epoch, index, (view * 256 + slot)):
        h = _lowbias32(h ^ (key & 0xFFFFFFFF))
    return h / 2**32


def test_counter_uniforms_equal_a_naive_lowbias32():
    """Both counter RNGs (numpy/numba and torch) give exactly the numbers of the
    documented hash chain over (seed, epoch, index, view * 256 + slot): a changed
    constant, shift or key order keeps the draws uniform (the statistical tests
    pass) but changes every number, and the backends would then disagree."""
    from pipelines import counter_rng as cr

    cases = [(0, 0, 0, 0, 0), (7, 3, 12345, 1, cr.SLOT_FLIP), (2**32 + 5, 9, 2**31 + 7, 2, 33),
             (123, 2**33 + 1, 4, 3, 20), (1, 1, 1, 255, 42), (5, 0, 99, 0, 255)]
    for seed, epoch, index, view, slot in cases:
        want = _naive_uniform(seed, epoch, index, view, slot)
        assert cr.uniform_np(seed, epoch, index, view, slot) == want
        got = cr.uniform_torch(seed, epoch, torch.tensor([index, index + 1]), view, slot)
        assert got.dtype == torch.float32
        assert got[0].item() == np.float32(want)
        assert got[1].item() == np.float32(_naive_uniform(seed, epoch, index + 1, view, slot))
    idx = np.arange(50, dtype=np.uint64)
    arr = cr.uniform_np(3, 1, idx, 1, 5)
    assert arr.dtype == np.float64 and (arr >= 0).all() and (arr < 1).all()
    assert [float(a) for a in arr] == [_naive_uniform(3, 1, i, 1, 5) for i in range(50)]
    # The torch draw is the numpy one rounded once to float32, for every index
    # (a divisor off by one, 2**32 + 1, flips ~0.4% of the roundings), and for
    # any integer index dtype (an int32 index must not wrap the 32-bit hash).
    many = np.arange(20000, dtype=np.uint64)
    want = cr.uniform_np(7, 2, many, 1, 9).astype(np.float32)
    for dtype in (torch.int64, torch.int32):
        got = cr.uniform_torch(7, 2, torch.arange(20000, dtype=dtype), 1, 9)
        assert np.array_equal(got.numpy(), want), dtype
    # the slot constants the samplers share: crop draws 0..21, then one each
    assert (cr.CROP_ATTEMPTS, cr.SLOT_POS_Y, cr.SLOT_POS_X) == (10, 20, 21)
    assert (cr.SLOT_FLIP, cr.SLOT_JITTER, cr.SLOT_COLOR, cr.SLOT_GRAY, cr.SLOT_BLUR,
            cr.SLOT_SIGMA, cr.SLOT_SOLARIZE, cr.SLOT_ROT, cr.SLOT_ROT_SHARED) == (
        32, 33, 34, 38, 39, 40, 41, 42, 43)


# --- each draw against the same draw written out from the counter uniforms ------
# (a naive reference: the algorithm as torchvision and the recipe state it, reading
# the uniforms by slot; the distribution tests above cannot see a slot swapped for
# another of the same law, an off-by-one in a position, or a constant changed)

def _naive_box(h, w, scale, ratio, seed, epoch, index, view):
    """torchvision's RandomResizedCrop.get_params with counter uniforms: 10 tries of
    area ~ U(scale) and log aspect ~ U(log ratio) (slots 2k, 2k+1), sides rounded,
    top/left uniform over the places the box fits (slots 20, 21), else the centre
    crop at the ratio range's nearest end."""
    import pipelines.counter_rng as cr

    def u(slot):
        return cr.uniform_np(seed, epoch, index, view, slot)

    for k in range(10):
        target = h * w * (scale[0] + (scale[1] - scale[0]) * u(2 * k))
        aspect = math.exp(math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0]))
                          * u(2 * k + 1))
        cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return int(u(20) * (h - ch + 1)), int(u(21) * (w - cw + 1)), ch, cw
    if w / h < ratio[0]:
        cw, ch = w, int(round(w / ratio[0]))
    elif w / h > ratio[1]:
        ch, cw = h, int(round(h * ratio[1]))
    else:
        ch, cw = h, w
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def _fresh_box():
    """crop_box made here by the factory the module uses at import (and the numba
    path at first use): the factory itself runs under the test (mutation testing
    only runs a test against the functions it saw called)."""
    import pipelines.counter_rng as cr
    from pipelines.sampling import make_crop_box

    return make_crop_box(cr.uniform_np)


@pytest.mark.parametrize("hw", [(375, 500), (32, 32), (120, 160), (17, 300), (300, 17),
                                (3, 3), (2, 5), (1, 1)])  # boxes of 1 or 0 px tried there
def test_crop_box_is_the_algorithm_written_out(hw):
    h, w = hw
    box = _fresh_box()
    for name in ("augself", "swav"):
        for v, vr in enumerate(preset(name).views[:3]):
            assert crop_args(vr) == (vr.scale[0], vr.scale[1], math.log(vr.ratio[0]),
                                     math.log(vr.ratio[1]))
            for i in range(150):
                got = box(h, w, *crop_args(vr), 5, 2, i, v)
                assert got == _naive_box(h, w, vr.scale, vr.ratio, 5, 2, i, v), (name, v, i)
                assert all(isinstance(x, int) for x in got)
                if i < 5:
                    assert crop_box(h, w, *crop_args(vr), 5, 2, i, v) == got  # the module's


@pytest.mark.parametrize("hw,scale,ratio,want", [
    ((10, 100), (0.9, 1.0), (0.9, 1.1), (0, 44, 10, 11)),   # too wide: h, w = h x max ratio
    ((100, 10), (0.9, 1.0), (0.9, 1.1), (44, 0, 11, 10)),   # too tall: w, h = w / min ratio
    ((40, 50), (2.0, 3.0), (0.75, 4 / 3), (0, 0, 40, 50)),  # no try fits, ratio in range
])
def test_crop_box_falls_back_to_the_centre_crop(hw, scale, ratio, want):
    h, w = hw
    args = (scale[0], scale[1], math.log(ratio[0]), math.log(ratio[1]))
    box = _fresh_box()
    for i in range(20):
        assert box(h, w, *args, 0, 0, i, 0) == want == _naive_box(h, w, scale, ratio, 0, 0, i, 0)


def test_crop_params_are_the_boxes_fractions_of_the_source():
    from pipelines.sampling import crop_fields, crop_params

    got = crop_params((3, 5, 20, 40), 60, 80)
    assert got.dtype == np.float32
    assert got.tolist() == np.array([3 / 60, 5 / 80, 20 / 60, 40 / 80], np.float32).tolist()
    boxes = np.array([[[3, 5, 20, 40], [0, 0, 60, 80]], [[1, 2, 3, 4], [7, 0, 9, 9]]])
    heights, widths = np.array([60, 10]), np.array([80, 12])
    fields = crop_fields(boxes, heights, widths)
    assert fields.dtype == np.float32 and fields.shape == (2, 2, 4)
    for b in range(2):
        for v in range(2):
            assert fields[b, v].tolist() == crop_params(boxes[b, v], heights[b],
                                                        widths[b]).tolist()


def test_sample_rest_is_each_slot_drawn_as_the_recipe_says():
    """Every drawn field from its own counter slot: flip, the jitter coin and its four
    factors (identity 1, 1, 1, 0 when the coin says no), grayscale, the blur coin and
    its sigma (0 when off), solarize, quarter turns (0 unless the view rotates)."""
    import dataclasses

    import pipelines.counter_rng as cr

    idx = torch.arange(600)
    base = dataclasses.replace(preset("byol").views[1], jitter_p=0.7, gray_p=0.3, blur_p=0.4,
                               solarize_p=0.25, flip_p=0.6, blur_sigma=(0.3, 1.7))
    for v, vr in enumerate([base, dataclasses.replace(base, rotate=True),
                            dataclasses.replace(base, rotate=True, rotate_shift=0),
                            dataclasses.replace(base, rotate=True, rotate_shift=3)]):
        p = sample_rest(vr, 11, 4, idx, v)

        def u(slot, v=v):
            return cr.uniform_torch(11, 4, idx, v, slot)

        def coin(slot, prob):
            return (u(slot) < prob).float()

        assert torch.equal(p["flip"][:, 0], coin(cr.SLOT_FLIP, vr.flip_p))
        on = coin(cr.SLOT_JITTER, vr.jitter_p) > 0
        for k, ((lo, hi), ident) in enumerate(zip(vr.color_ranges(), (1.0, 1.0, 1.0, 0.0))):
            want = torch.where(on, lo + (hi - lo) * u(cr.SLOT_COLOR + k), torch.tensor(ident))
            assert torch.equal(p["color"][:, k], want), k
        assert torch.equal(p["gray"][:, 0], coin(cr.SLOT_GRAY, vr.gray_p))
        lo, hi = vr.blur_sigma
        sigma = (lo + (hi - lo) * u(cr.SLOT_SIGMA)) * coin(cr.SLOT_BLUR, vr.blur_p)
        assert torch.equal(p["blur"][:, 0], sigma)
        assert torch.equal(p["solarize"][:, 0], coin(cr.SLOT_SOLARIZE, vr.solarize_p))
        if not vr.rotate:
            want = torch.zeros(len(idx))
        elif vr.rotate_shift < 0:
            want = torch.floor(u(cr.SLOT_ROT) * 4)
        else:  # the sample's shared turn (view 0's slot), shifted
            shared = torch.floor(cr.uniform_torch(11, 4, idx, 0, cr.SLOT_ROT_SHARED) * 4)
            want = (shared + vr.rotate_shift) % 4
        assert torch.equal(p["rot"][:, 0], want), v
        from pipelines.params import DRAWN, FIELDS
        assert list(p) == list(DRAWN)
        assert all(p[k].dtype == torch.float32 and p[k].shape == (len(idx), FIELDS[k]) for k in p)
        # and every field does vary (the coins are neither always on nor always off)
        assert 0 < on.float().mean() < 1 and p["rot"].unique().numel() in (1, 4)
