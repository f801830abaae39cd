"""CIFAR-10/100 python pickles and STL-10 binaries, written here byte for byte in
their published formats, convert to records and .beton with the right counts,
labels and pixels (raw .beton and PNG records are lossless: exact equality)."""

import pickle
import zlib

import numpy as np
import pytest
from conftest import run_tool
from readback import manifest, read_beton, read_records

pytestmark = [pytest.mark.dali, pytest.mark.ffcv]


def _images(rng, n, h, w):
    return rng.integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)


def _cifar_row(img):
    # Published layout: 1024 red, then 1024 green, then 1024 blue; each plane row-major.
    return np.concatenate([img[:, :, c].reshape(-1) for c in range(3)])


def _write_cifar10(root, rng):
    root.mkdir()
    names = [f"class{k}" for k in range(10)]
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [n.encode() for n in names]}, f)
    expected = {"train": ([], []), "test": ([], [])}
    for fname, split, n in [(f"data_batch_{k}", "train", 3) for k in range(1, 6)] + [
            ("test_batch", "test", 4)]:
        imgs = _images(rng, n, 32, 32)
        labels = rng.integers(0, 10, size=n).tolist()
        with open(root / fname, "wb") as f:
            pickle.dump({b"data": np.stack([_cifar_row(x) for x in imgs]), b"labels": labels,
                         b"filenames": [b"x.png"] * n}, f)
        expected[split][0].extend(imgs)
        expected[split][1].extend(labels)
    return names, expected


def _write_cifar100(root, rng):
    root.mkdir()
    fine = [f"fine{k}" for k in range(100)]
    with open(root / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [n.encode() for n in fine],
                     b"coarse_label_names": [b"c"] * 20}, f)
    expected = {}
    for split, n in (("train", 6), ("test", 3)):
        imgs = _images(rng, n, 32, 32)
        labels = rng.integers(0, 100, size=n).tolist()
        with open(root / split, "wb") as f:
            pickle.dump({b"data": np.stack([_cifar_row(x) for x in imgs]),
                         b"fine_labels": labels, b"coarse_labels": [0] * n}, f)
        expected[split] = (list(imgs), labels)
    return fine, expected


def _stl_bytes(imgs):
    # Published layout: per image, channel by channel, each channel column-major.
    return b"".join(img[:, :, c].flatten(order="F").tobytes() for img in imgs for c in range(3))


def _write_stl10(root, rng):
    root.mkdir()
    names = [f"stl{k}" for k in range(10)]
    (root / "class_names.txt").write_text("\n".join(names) + "\n")
    expected = {}
    for split, n in (("train", 5), ("test", 3), ("unlabeled", 4)):
        imgs = _images(rng, n, 96, 96)
        (root / f"{split}_X.bin").write_bytes(_stl_bytes(imgs))
        if split == "unlabeled":
            labels = [-1] * n
        else:
            labels = rng.integers(0, 10, size=n).tolist()
            (root / f"{split}_y.bin").write_bytes(bytes(x + 1 for x in labels))  # stored 1..10
        expected[split] = (list(imgs), labels)
    return names, expected


CASES = {
    "cifar10": (_write_cifar10, "cifar-10-batches-py", ["train", "test"]),
    "cifar100": (_write_cifar100, "cifar-100-python", ["train", "test"]),
    "stl10": (_write_stl10, "stl10_binary", ["train", "test", "unlabeled"]),
}


@pytest.mark.parametrize("fmt", list(CASES))
def test_array_formats_roundtrip(tmp_path, fmt):
    write, folder, splits = CASES[fmt]
    names, expected = write(tmp_path / folder, np.random.default_rng(zlib.crc32(fmt.encode())))
    for split in splits:
        out = tmp_path / f"out-{split}"
        # The parent folder is given: the format and its sub-folder are detected.
        # The .beton is read back for the first split only (the FFCV Loader compiles per
        # file), so the others skip writing it, and the ~10 s FFCV import with it.
        r = run_tool("tools.convert_dataset", tmp_path, "--split", split, "--out", out,
                     "--write-mode", "raw", "--record-codec", "png", "--quiet", "--workers", "2",
                     "--shard-size", "4", *([] if split == splits[0] else ["--no-beton"]))
        assert r.returncode == 0, r.stderr
        m = manifest(out)
        imgs, labels = expected[split]
        assert m["format"] == fmt and m["split"] == split
        assert m["classes"] == names
        assert m["counts"]["written"] == len(imgs) and m["problems"] == []
        assert len(m["outputs"]["records"]["shards"]) == -(-len(imgs) // 4)

        rec_imgs, rec_labels, rec_idx = read_records(out, batch_size=4)
        assert rec_labels.tolist() == labels
        assert rec_idx.tolist() == list(range(len(imgs)))
        for got, want in zip(rec_imgs, imgs):
            np.testing.assert_array_equal(got, want)

        if split == splits[0]:
            b_imgs, b_labels, b_idx = read_beton(out, batch_size=4)
            np.testing.assert_array_equal(b_imgs, np.stack(imgs))
            assert b_labels.tolist() == labels and b_idx.tolist() == list(range(len(imgs)))


def test_cifar_with_wrong_row_length_is_a_clear_error(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    _write_cifar10(root, np.random.default_rng(0))
    with open(root / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    r = run_tool("tools.convert_dataset", root, "--split", "test", "--out", tmp_path / "o")
    assert r.returncode != 0
    assert "test_batch" in r.stderr and "3072" in r.stderr
    assert not (tmp_path / "o").exists()


def test_stl10_with_truncated_binary_is_a_clear_error(tmp_path):
    root = tmp_path / "stl10_binary"
    _write_stl10(root, np.random.default_rng(0))
    data = (root / "train_X.bin").read_bytes()
    (root / "train_X.bin").write_bytes(data[:-10])
    r = run_tool("tools.convert_dataset", root, "--split", "train", "--out", tmp_path / "o")
    assert r.returncode != 0 and "train_X.bin" in r.stderr
    assert not (tmp_path / "o").exists()
