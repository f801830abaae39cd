"""CIFAR-10 test split from ../shared/data (JPEGs in an ImageFolder tree) converts,
and the stock FFCV Loader and DALI webdataset reader give back all 10,000 samples
with the class-folder labels and the source pixels.

PSNR bounds, against the source JPEG decoded by PIL (libjpeg-turbo):
- records: the source JPEG bytes are stored unchanged; DALI's CPU decoder gives
  the same pixels as PIL: exact (measured 10,000/10,000 identical).
- .beton raw: the decoded pixels themselves: exact.
- .beton jpg: FFCV re-encodes with OpenCV at quality 90 and 4:2:0 chroma;
  measured min 31.8 dB, median 40.9 dB on this split. Bound: every image
  >= 30 dB, median >= 38 dB.
- .beton proportion: each image either raw (exact) or jpg (the jpg bound);
  roughly half of each (compress_probability 0.5).
"""

import tarfile

import numpy as np
import pytest
from conftest import SHARED_DATA, run_tool
from PIL import Image
from readback import manifest, psnr, read_beton, read_records

pytestmark = [pytest.mark.slow, pytest.mark.dali, pytest.mark.ffcv]
TARBALL = SHARED_DATA / "cifar10-jpeg.tar.gz"


@pytest.fixture(scope="module")
def cifar_test(tmp_path_factory):
    if not TARBALL.exists():
        pytest.skip(f"{TARBALL} not found")
    root = tmp_path_factory.mktemp("cifar")
    with tarfile.open(TARBALL) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith("cifar10/test/")]
        tar.extractall(root, members=members, filter="data")
    src = root / "cifar10"
    files = sorted((src / "test").glob("*/*.jpg"))
    classes = sorted(p.name for p in (src / "test").iterdir())
    labels = np.array([classes.index(f.parent.name) for f in files])
    pixels = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    return src, classes, labels, pixels


def _convert(src, out, *extra):
    r = run_tool("tools.convert_dataset", src, "--split", "test", "--out", out, "--quiet",
                 *extra)
    assert r.returncode == 0, r.stderr
    return manifest(out)


def test_records_and_raw_beton_are_exact(cifar_test, tmp_path):
    src, classes, labels, pixels = cifar_test
    m = _convert(src, tmp_path / "raw", "--write-mode", "raw", "--shard-size", "3000")
    assert m["counts"]["written"] == 10000 and m["classes"] == classes
    assert len(m["outputs"]["records"]["shards"]) == 4

    images, rec_labels, rec_index = read_records(tmp_path / "raw", batch_size=256)
    assert len(images) == 10000
    np.testing.assert_array_equal(rec_labels, labels)
    np.testing.assert_array_equal(rec_index, np.arange(10000))
    np.testing.assert_array_equal(np.stack(images), pixels)

    b_images, b_labels, b_index = read_beton(tmp_path / "raw")
    assert len(b_images) == 10000
    np.testing.assert_array_equal(b_labels, labels)
    np.testing.assert_array_equal(b_index, np.arange(10000))
    np.testing.assert_array_equal(b_images, pixels)


@pytest.mark.parametrize("mode", ["jpg", "proportion"])
def test_lossy_beton_within_stated_psnr(cifar_test, tmp_path, mode):
    src, classes, labels, pixels = cifar_test
    _convert(src, tmp_path / mode, "--write-mode", mode, "--no-records")
    images, b_labels, b_index = read_beton(tmp_path / mode)
    assert len(images) == 10000
    np.testing.assert_array_equal(b_labels, labels)
    np.testing.assert_array_equal(b_index, np.arange(10000))
    ps = np.array([psnr(a, b) for a, b in zip(images, pixels)])
    lossy = ps[np.isfinite(ps)]
    assert lossy.min() >= 30 and np.median(lossy) >= 38
    exact = int((~np.isfinite(ps)).sum())
    if mode == "jpg":
        assert exact == 0
    else:
        assert 4500 < exact < 5500  # Binomial(10000, 0.5): 10 standard deviations
