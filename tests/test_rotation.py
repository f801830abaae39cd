"""The rotation field (E-SSL's four-fold rotation, params "rot"): its draw is
uniform over the four quarter turns and zero where the recipe does not rotate;
a rotated view is exactly the reference's torch.rot90 of the unrotated one in
every renderer; every backend emits and applies it (loader, the trainer's
rotated views)."""

import dataclasses

import numpy as np
import pytest
import torch
from agreement import noise_and_ramps, sources, view_psnrs
from conftest import backends_here, device_for

from pipelines import photometric, photometric_cpu, reference, sampling
from pipelines.build import LoaderConfig, build_loader
from pipelines.recipe import from_spec, preset, with_rotated_views


def test_turns_are_uniform_and_off_unless_the_recipe_rotates():
    vr = preset("augself", 32).views[0]
    idx = torch.arange(8000)
    off = sampling.sample_rest(vr, 3, 1, idx, 0)["rot"]
    assert (off == 0).all()
    on = sampling.sample_rest(dataclasses.replace(vr, rotate=True), 3, 1, idx, 0)["rot"]
    counts = torch.bincount(on[:, 0].long(), minlength=4)
    assert len(counts) == 4 and ((counts - 2000).abs() < 150).all(), counts  # ~4.5 sigma
    # a view's turn is its own draw: other views and epochs turn otherwise
    other = sampling.sample_rest(dataclasses.replace(vr, rotate=True), 3, 2, idx, 0)["rot"]
    assert 0.6 < (other != on).float().mean() < 0.9


@pytest.mark.parametrize("flip", [0.0, 1.0])
def test_a_turned_view_is_rot90_of_the_unturned_one(flip):
    """Every renderer: the view with k quarter turns equals torch.rot90 (counter-
    clockwise, (H, W) axes) of the same view with none: bit for bit from the
    numba kernel; within float32 roundoff from the reference and the batched
    torch stage (1e-5 of [0, 1]: their mean luma for contrast is summed in
    another order, and the hue shift amplifies that a little).
    No blur here: blurring a turned view runs its two passes over the other
    axes first, float roundoff apart; the agreement tests cover that case."""
    vr = dataclasses.replace(preset("augself", 24).views[0], blur_p=0.0, rotate=True)
    crops = noise_and_ramps(8, 24, seed=2)
    p = sampling.sample_rest(vr, 0, 0, torch.arange(8), 0)
    p["flip"][:] = flip
    for k in range(4):
        pk = {**p, "rot": torch.full_like(p["rot"], float(k))}
        p0 = {**p, "rot": torch.zeros_like(p["rot"])}
        # the numba kernel (dali-cpu, ffcv on a CPU)
        out_k, out_0 = np.empty_like(crops), np.empty_like(crops)
        photometric_cpu.render_batch(crops, photometric_cpu.rest_of(pk), out_k)
        photometric_cpu.render_batch(crops, photometric_cpu.rest_of(p0), out_0)
        assert np.array_equal(out_k, np.rot90(out_0, k, axes=(1, 2))), k
        # the torch stage (GPU fallback) and the reference
        x = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255
        y_k, y_0 = photometric.apply(x, pk, vr), photometric.apply(x, p0, vr)
        torch.testing.assert_close(y_k, y_0.rot90(k, (-2, -1)), atol=1e-5, rtol=0)
        for i in range(2):
            z_k = reference.photometric(x[i], {f: t[i] for f, t in pk.items()})
            z_0 = reference.photometric(x[i], {f: t[i] for f, t in p0.items()})
            torch.testing.assert_close(z_k, z_0.rot90(k, (-2, -1)), atol=1e-5, rtol=0)


def test_the_turn_is_the_one_applied():
    """Against the reference re-render with the emitted turn, every other turn
    scores worse: the kernel turns the way it says (noise crops: a wrong turn
    is ~10 dB off)."""
    from agreement import psnr, reference_view

    vr = dataclasses.replace(preset("augself", 24).views[0], rotate=True)
    crops = noise_and_ramps(16, 24, seed=4)
    p = sampling.sample_rest(vr, 0, 0, torch.arange(16), 0)
    out = np.empty_like(crops)
    photometric_cpu.render_batch(crops, photometric_cpu.rest_of(p), out)
    for i in range(16):
        scores = []
        for k in range(4):
            q = {f: t[i].clone() for f, t in p.items()}
            q["rot"][0] = k
            scores.append(psnr(out[i], reference_view(crops[i], q)[1]))
        assert int(np.argmax(scores)) == int(p["rot"][i, 0]), (i, scores)


def test_spec_rotate_is_a_flag():
    r = from_spec({"views": [{}, {"rotate": True}]}, preset("augself", 24))
    assert [v.rotate for v in r.views] == [False, True]
    with pytest.raises(ValueError, match=r"recipe.all: rotate=3: expected true or false"):
        from_spec({"all": {"rotate": 3}}, preset("augself", 24))


def test_every_backend_emits_and_applies_the_turns(small_dataset):
    """The trainer's rotated views (LoaderConfig.rotated_views): appended after
    the recipe's views at the given side, the same turns bit for bit on every
    backend, uniform-ish, and each view matching the reference re-render with
    its turn (median PSNR per view, so that a wrong turn on the rotated views
    alone cannot hide in an overall median)."""
    def stream(backend):
        loader = build_loader(LoaderConfig(data=str(small_dataset), backend=backend,
                                           preset="augself", size=24, rotated_views=2,
                                           batch_size=32, workers=1, keep_raw=True,
                                           shuffle=False, device=device_for(backend)))
        loader.set_epoch(0)
        return loader.recipe, [b for _, b in zip(range(2), loader)]

    recipe, want = stream("torchvision")
    assert recipe == with_rotated_views(preset("augself", 24), 2, 12)
    srcs = sources(small_dataset)
    turns = torch.cat([w.params["rot"][:, 2:, 0].reshape(-1) for w in want])
    assert set(turns.long().tolist()) == {0, 1, 2, 3}
    assert all((w.params["rot"][:, :2] == 0).all() for w in want)
    for backend in backends_here():
        r, got = stream(backend)
        assert r == recipe
        for b, w in zip(got, want):
            for k in w.params:
                assert torch.equal(b.params[k].cpu(), w.params[k].cpu()), (backend, k)
            assert [x.shape[1] for x in b.raw] == [24, 24, 12, 12]
            per_view = np.median(view_psnrs(b, recipe, srcs), axis=0)
            assert (per_view > 33).all(), (backend, per_view)


def test_four_rotated_views_take_every_turn_once():
    """E-SSL's four turns of each image: the extra views' shifted turns are a
    permutation of 0-3 for every sample, so every batch is balanced; the
    sample's turn t itself is uniform."""
    recipe = with_rotated_views(preset("augself", 32), 4, 16)
    idx = torch.arange(4000)
    t = torch.stack([sampling.sample_rest(vr, 0, 3, idx, v)["rot"][:, 0]
                     for v, vr in enumerate(recipe.views)], 1)
    assert (t[:, :2] == 0).all()
    assert (t[:, 2:].sort(1).values == torch.arange(4.0)).all()
    counts = torch.bincount(t[:, 2].long(), minlength=4)
    assert ((counts - 1000).abs() < 120).all(), counts
    # numba's draw of the same rows (FFCV's op, the GPU stage) agrees bit for bit
    rows = photometric_cpu.recipe_rows(recipe)
    got = np.zeros((64, recipe.num_views, len(photometric_cpu.REST)), np.float32)
    photometric_cpu.draw_rest_batch(rows, 0, 3, np.arange(64), got)
    assert np.array_equal(got[..., photometric_cpu._ROT], t[:64].numpy())
