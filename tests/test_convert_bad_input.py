"""A folder of awkward and broken files converts what is readable, reports the rest,
and the tool never leaves a partial or mixed output behind."""

import json

import numpy as np
import pytest
from conftest import run_tool
from PIL import Image
from readback import beton_sizes, manifest, read_records

from tools import convert_dataset

pytestmark = [pytest.mark.dali, pytest.mark.ffcv]

MAX_RES = 256


def _make_bad_folder(root):
    """root/good/* readable in odd formats, root/bad/* unreadable. Returns expected pixels."""
    rng = np.random.default_rng(0)
    good, bad = root / "good", root / "bad"
    good.mkdir(parents=True)
    bad.mkdir(parents=True)
    expected = {}

    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(good / "a_plain.png")
    expected["good/a_plain.png"] = rgb

    cmyk = Image.fromarray(rng.integers(0, 256, (24, 16, 4), dtype=np.uint8), mode="CMYK")
    cmyk.save(good / "b_cmyk.jpg", quality=95)
    expected["good/b_cmyk.jpg"] = np.asarray(Image.open(good / "b_cmyk.jpg").convert("RGB"))

    # 16-bit grayscale: the 8-bit result is the high byte.
    g16 = rng.integers(0, 65536, (18, 22), dtype=np.uint16)
    Image.fromarray(g16).save(good / "c_gray16.png")
    assert Image.open(good / "c_gray16.png").mode.startswith("I")
    expected["good/c_gray16.png"] = np.repeat((g16 >> 8).astype(np.uint8)[..., None], 3, 2)

    rgba = rng.integers(0, 256, (12, 14, 4), dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(good / "d_rgba.png")
    a = rgba[..., 3:].astype(np.float64) / 255
    expected["good/d_rgba.png"] = rgba[..., :3] * a + 255 * (1 - a)  # over white

    gray = rng.integers(0, 256, (16, 16), dtype=np.uint8)
    Image.fromarray(gray).save(good / "e_gray.jpg", quality=95)
    dec = np.asarray(Image.open(good / "e_gray.jpg"))
    expected["good/e_gray.jpg"] = np.repeat(dec[..., None], 3, 2)

    # 9000x9000: smooth content keeps the file small; must come out 256x256.
    yy, xx = np.mgrid[0:9000:10, 0:9000:10]
    small = np.stack([xx * 255 // 9000, yy * 255 // 9000, np.full_like(xx, 128)], -1)
    Image.fromarray(small.astype(np.uint8)).resize((9000, 9000)).save(good / "f_huge.jpg",
                                                                      quality=80)
    expected["good/f_huge.jpg"] = None  # checked by size and mean colour

    full = Image.fromarray(rgb)
    full.save(bad / "truncated.jpg", quality=95)
    data = (bad / "truncated.jpg").read_bytes()
    (bad / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (bad / "zero.jpg").write_bytes(b"")
    (bad / "text.jpg").write_text("this is not an image\n")
    (root / "bad" / "notes.txt").write_text("ignored: not an image extension\n")
    return expected


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("src")
    expected = _make_bad_folder(root)
    out = root.parent / "out"
    r = run_tool("tools.convert_dataset", root, "--out", out, "--max-res", MAX_RES,
                 "--record-codec", "png", "--write-mode", "raw", "--quiet")
    return root, out, expected, r


def test_readable_files_are_converted_and_bad_ones_reported(converted):
    root, out, expected, r = converted
    assert r.returncode == 0, r.stderr
    m = manifest(out)
    reasons = {p["file"]: p["reason"] for p in m["problems"]}
    assert set(reasons) == {"bad/truncated.jpg", "bad/zero.jpg", "bad/text.jpg"}
    assert "truncated" in reasons["bad/truncated.jpg"]
    assert "empty" in reasons["bad/zero.jpg"]
    assert "not an image" in reasons["bad/text.jpg"]
    for f in reasons:  # named on stderr too
        assert f in r.stderr
    assert m["counts"]["written"] == 6 and m["counts"]["skipped"] == 3
    assert m["counts"]["ignored_non_images"] == 1
    assert m["classes"] == ["bad", "good"]

    images, labels, index = read_records(out, batch_size=4)
    assert labels.tolist() == [1] * 6 and index.tolist() == list(range(6))
    names = sorted(expected)  # sources are read in sorted order
    for name, got in zip(names, images):
        want = expected[name]
        if want is None:
            assert got.shape == (MAX_RES, MAX_RES, 3)
            # The gradient's mean colour survives the downscale.
            np.testing.assert_allclose(got.reshape(-1, 3).mean(0), [127, 127, 128], atol=3)
        else:
            np.testing.assert_allclose(got.astype(float), want, atol=1, err_msg=name)
    assert beton_sizes(out) == [img.shape[:2] for img in images]


def test_strict_fails_and_writes_nothing(converted, tmp_path):
    root = converted[0]
    r = run_tool("tools.convert_dataset", root, "--out", tmp_path / "o", "--strict", "--quiet")
    assert r.returncode != 0 and "--strict" in r.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("case", ["missing", "empty", "only_bad", "unknown_format", "nonempty"])
def test_unusable_input_is_one_clear_line_and_writes_nothing(converted, tmp_path, case):
    root = converted[0]
    out = tmp_path / "o"
    src = root
    extra = []
    if case == "missing":
        src = tmp_path / "nope"
    elif case == "empty":
        src = tmp_path / "empty"
        src.mkdir()
    elif case == "only_bad":
        src = root / "bad"
    elif case == "unknown_format":
        extra = ["--format", "tfrecord"]
    elif case == "nonempty":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    r = run_tool("tools.convert_dataset", src, "--out", out, "--quiet", *extra)
    assert r.returncode != 0
    # Per-file "skipped ..." lines may precede it (only_bad); the error itself is one line.
    lines = [x for x in r.stderr.splitlines() if x.strip() and not x.startswith("skipped ")]
    assert len(lines) == 1 and lines[0].startswith("convert_dataset: error:"), r.stderr
    assert str(src if case != "nonempty" else out) in lines[0] or case == "unknown_format"
    if case == "nonempty":
        assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
        assert (out / "keep.txt").read_text() == "mine"
    else:
        assert not out.exists()


def test_interrupted_run_keeps_previous_outputs_and_leaves_no_final_names(converted, tmp_path,
                                                                          monkeypatch):
    root, out_done = converted[0], converted[1]
    out = tmp_path / "o"
    assert convert_dataset.main([str(root / "good"), "--out", str(out), "--quiet",
                                 "--workers", "1"]) == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.rglob("*")}
    old_manifest = (out / "manifest.json").read_text()

    def boom(*a, **k):
        raise KeyboardInterrupt  # as if Ctrl-C arrived while the .beton was being written

    monkeypatch.setattr(convert_dataset, "write_beton", boom)
    assert convert_dataset.main([str(root), "--out", str(out), "--overwrite", "--quiet",
                                 "--workers", "1"]) == 130
    after = {p.name: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert after == before  # nothing new, nothing lost, no .partial left
    assert (out / "manifest.json").read_text() == old_manifest
    assert json.loads(old_manifest)["counts"]["written"] == 6

    # A completed --overwrite replaces the tool's outputs.
    monkeypatch.undo()
    assert convert_dataset.main([str(root), "--out", str(out), "--overwrite", "--quiet",
                                 "--workers", "1", "--no-beton"]) == 0
    assert not (out / "data.beton").exists()  # stale output of the earlier run removed
    assert manifest(out)["counts"]["written"] == 6 and manifest(out)["classes"] == ["bad", "good"]
    assert out_done.exists()

    # A file the tool did not write makes --overwrite refuse, changing nothing.
    (out / "keep.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert convert_dataset.main([str(root / "good"), "--out", str(out), "--overwrite",
                                 "--quiet", "--workers", "1", "--no-beton"]) == 1
    assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
