"""The loader benchmark's peer pipelines (benchmarks/peers.py): tv2 and dali-stock
build, read the JPEGs themselves and yield two normalised float views per image
whose values are normalised uint8 pixels; the benchmark prints a line per peer
and the ratio of the best project backend to each (issue 24.1)."""

import dataclasses

import numpy as np
import pytest
import torch
from conftest import HAVE_DALI, run_tool
from PIL import Image

from benchmarks import loader as bench
from benchmarks import peers
from pipelines.recipe import preset

PEER_PARAMS = [pytest.param("tv2"), pytest.param("dali-stock", marks=pytest.mark.dali)]
MEAN = np.array(preset("augself").mean)
STD = np.array(preset("augself").std)


def _recipe(size=16, **kw):
    """augself's two views with every photometric op off unless given."""
    base = preset("augself", size)
    v = dataclasses.replace(base.views[0], **{**dict(jitter_p=0.0, gray_p=0.0, blur_p=0.0,
                                                     flip_p=0.0), **kw})
    return dataclasses.replace(base, views=(v, v))


def _write(root, n, make):
    """n JPEGs in two class folders; make(i) -> uint8 (H, W, 3)."""
    for i in range(n):
        d = root / f"class{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(make(i)).save(d / f"{i:03d}.jpg", quality=95)
    return peers.image_files(root)


def _batches(name, files, labels, recipe, n=2, batch=4):
    loader = peers.build_peer(name, files, labels, recipe, batch, 1, torch.device("cpu"))
    it = iter(loader)
    return [next(it) for _ in range(n)]


def _levels(x: torch.Tensor) -> np.ndarray:
    """Normalised (B, 3, H, W) -> the 0-255 levels it was normalised from."""
    return (x.numpy() * STD[None, :, None, None] + MEAN[None, :, None, None]) * 255


def test_image_files_lists_class_folders_in_order(tmp_path):
    files, labels = _write(tmp_path, 4, lambda i: np.zeros((8, 8, 3), np.uint8))
    assert [f.split("/")[-2:] for f in files] == [["class0", "000.jpg"], ["class0", "002.jpg"],
                                                  ["class1", "001.jpg"], ["class1", "003.jpg"]]
    assert labels == [0, 0, 1, 1]


@pytest.mark.parametrize("name", PEER_PARAMS)
def test_peer_yields_two_normalised_float_views_of_uint8_pixels(tmp_path, name):
    rng = np.random.default_rng(0)
    files, labels = _write(tmp_path, 8, lambda i: rng.integers(0, 256, (40, 56, 3), np.uint8))
    for b in _batches(name, files, labels, preset("augself", 24)):  # the full recipe
        assert len(b) == 4 and b.labels.dtype == torch.int64
        assert set(b.labels.tolist()) <= {0, 1}
        assert len(b.views) == 2
        for v in b.views:
            assert v.shape == (4, 3, 24, 24) and v.dtype == torch.float32
            assert v.device.type == "cpu"
            lv = _levels(v)
            assert lv.min() > -1e-3 and lv.max() < 255 + 1e-3
            np.testing.assert_allclose(lv, np.round(lv), atol=2e-3)  # whole levels
        assert not torch.equal(b.views[0], b.views[1])  # two draws, not one view twice


@pytest.mark.parametrize("name", PEER_PARAMS)
def test_constant_colour_gives_exactly_its_normalised_colour(tmp_path, name):
    files, labels = _write(tmp_path, 4, lambda i: np.full((48, 64, 3), (200, 90, 30), np.uint8))
    decoded = np.asarray(Image.open(files[0]).convert("RGB"))
    assert (decoded == decoded[0, 0]).all()
    want = (decoded[0, 0] / 255 - MEAN) / STD
    for b in _batches(name, files, labels, _recipe(), n=1):
        for v in b.views:
            got = v.permute(0, 2, 3, 1).reshape(-1, 3).numpy()
            np.testing.assert_allclose(got, np.broadcast_to(want, got.shape), atol=1e-5)


@pytest.mark.parametrize("name", PEER_PARAMS)
@pytest.mark.parametrize("flip_p", [0.0, 1.0])
def test_flip_off_and_on(tmp_path, name, flip_p):
    left, right = np.array((220, 40, 40)), np.array((30, 60, 210))

    def halves(i):
        img = np.empty((64, 64, 3), np.uint8)
        img[:, :32], img[:, 32:] = left, right  # the edge on a JPEG block boundary
        return img

    files, labels = _write(tmp_path, 4, halves)
    decoded = np.asarray(Image.open(files[0]).convert("RGB")).astype(float)
    first = decoded[:, 0] if flip_p == 0 else decoded[:, -1]  # what column 0 must show
    last = decoded[:, -1] if flip_p == 0 else decoded[:, 0]
    recipe = _recipe(scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=flip_p)  # the whole image
    for b in _batches(name, files, labels, recipe, n=1):
        for v in b.views:
            lv = _levels(v)
            np.testing.assert_allclose(lv[:, :, :, 0], np.broadcast_to(
                first.mean(0)[None, :, None], lv[:, :, :, 0].shape), atol=1.01)
            np.testing.assert_allclose(lv[:, :, :, -1], np.broadcast_to(
                last.mean(0)[None, :, None], lv[:, :, :, -1].shape), atol=1.01)


@pytest.mark.parametrize("name", PEER_PARAMS)
def test_grayscale_gives_equal_channels_at_the_luma(tmp_path, name):
    files, labels = _write(tmp_path, 4, lambda i: np.full((48, 64, 3), (200, 90, 30), np.uint8))
    rgb = np.asarray(Image.open(files[0]).convert("RGB"))[0, 0].astype(float)
    luma = rgb @ np.array([0.299, 0.587, 0.114])
    for b in _batches(name, files, labels, _recipe(gray_p=1.0), n=1):
        for v in b.views:
            lv = _levels(v)
            assert np.abs(lv - luma).max() < 2.0  # each channel: the luma, to rounding


def test_unknown_peer_is_refused():
    with pytest.raises(ValueError, match="unknown peer"):
        peers.build_peer("kornia", ["x.jpg"], [0], _recipe(), 4, 1, torch.device("cpu"))


def _small(*extra):
    return ["--n-images", "8", "--batch", "4", "--batches-per-run", "1", "--repeats", "1",
            "--workers", "1", "--sizes", "24", "--backends", "torchvision", "--no-write", *extra]


def test_benchmark_prints_each_peer_and_the_ratios(capsys):
    assert bench.main(_small("--peer-window", "users,3sigma")) == 0
    out = capsys.readouterr().out
    assert "peer tv2: " in out and " img/s at 24 px (emits no parameters)" in out
    assert "peer tv2 (3sigma): " in out  # the same peer with the backends' blur window
    if HAVE_DALI:
        assert "peer dali-stock: " in out
        assert "best project backend / peer at 24 px: torchvision" in out
        assert "x tv2, " in out and "x dali-stock" in out
    assert "| torchvision (yardstick) | tv2 (peer) | dali-stock (peer) |" in out
    assert "neither peer emits parameters" in out


def test_dali_stock_says_not_installed_without_dali(monkeypatch, capsys):
    monkeypatch.setattr(peers, "dali_installed", lambda: False)
    assert bench.main(_small()) == 0
    out = capsys.readouterr().out
    assert "peer dali-stock: not installed" in out
    assert "= " in out and "x tv2" in out and "x dali-stock" not in out


def test_unknown_peer_or_window_is_refused_before_work():
    for extra in (["--peers", "kornia"], ["--peer-window", "wide"]):
        with pytest.raises(SystemExit) as e:
            bench.main(_small(*extra))
        assert e.value.code == 2


@pytest.mark.slow
def test_acceptance_command():
    """The issue's command, as a user runs it (about 100 s on 2 busy cores)."""
    r = run_tool("benchmarks.loader", "--n-images", "256", "--batch", "32", "--repeats", "1",
                 "--sizes", "96", "--no-write")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "peer tv2: " in r.stdout
    assert "peer dali-stock: " in r.stdout  # a figure, or "not installed"
    assert "best project backend / peer at 96 px: " in r.stdout and "x tv2" in r.stdout
