"""Damaged data is named, not crashed on: truncated or replaced shards and
.beton files at start, a damaged JPEG inside a shard when it is read, and class
folders without a readable image at conversion; and verify_dataset names a
sample whose records and .beton hold different images."""

import json
import shutil

import numpy as np
import pytest
from conftest import HAVE_FFCV, run_tool
from PIL import Image

from pipelines.integrity import check_sizes, verify
from pipelines.records import Records


@pytest.fixture()
def converted(tmp_path):
    from tools import convert_dataset, make_synthetic

    make_synthetic.generate(tmp_path / "img", (40, 40), 40, 0, seed=2, quiet=True)
    rc = convert_dataset.main([str(tmp_path / "img"), "--split", "train", "--out",
                               str(tmp_path / "c"), "--write-mode", "raw", "--quiet",
                               "--shard-size", "16", *([] if HAVE_FFCV else ["--no-beton"])])
    assert rc == 0
    return tmp_path / "c"


def test_manifest_records_every_file_and_verify_agrees(converted):
    manifest = json.loads((converted / "manifest.json").read_text())
    names = set(manifest["integrity"])
    assert {"records/shard-000000.tar", "records/shard-000002.idx"} <= names
    assert ("data.beton" in names) == (manifest["outputs"]["beton"] is not None)
    assert verify(converted, manifest) == []


def test_truncated_shard_is_named_at_start(converted):
    shard = converted / "records" / "shard-000001.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="shard-000001.tar.*truncated or was replaced"):
        Records(converted)
    shard.unlink()
    with pytest.raises(ValueError, match="shard-000001.tar: missing"):
        Records(converted)


def test_truncated_beton_is_named_before_loading(converted, tmp_path):
    manifest = json.loads((converted / "manifest.json").read_text())
    if manifest["outputs"]["beton"] is None:
        pytest.skip("converted without a .beton here")
    beton = converted / "data.beton"
    beton.write_bytes(beton.read_bytes()[:1000])
    with pytest.raises(ValueError, match="data.beton: 1000 bytes, the manifest says"):
        check_sizes(converted, manifest, ["data.beton"])


def test_class_folder_without_images_is_a_problem_and_strict_refuses(tmp_path):
    from tools import make_synthetic

    make_synthetic.generate(tmp_path / "img", (40, 40), 30, 0, seed=3, quiet=True)
    empty = sorted((tmp_path / "img" / "train").iterdir())[0]
    shutil.rmtree(empty)
    empty.mkdir()
    r = run_tool("tools.convert_dataset", tmp_path / "img", "--split", "train", "--out",
                 tmp_path / "c", "--no-beton", "--quiet")
    assert r.returncode == 0 and empty.name in r.stderr, r.stderr
    problems = json.loads((tmp_path / "c" / "manifest.json").read_text())["problems"]
    assert any(empty.name in p["file"] and "without a readable image" in p["reason"]
               for p in problems)
    r = run_tool("tools.convert_dataset", tmp_path / "img", "--split", "train", "--out",
                 tmp_path / "s", "--no-beton", "--quiet", "--strict")
    assert r.returncode != 0 and "--strict" in r.stderr and not (tmp_path / "s").exists()


def _make_source(root, n: int = 4, seed: int = 1):
    """root/cat, root/dog: n 16x16 random images each, JPEGs (even k) and PNGs (odd k)."""
    rng = np.random.default_rng(seed)
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for k in range(n):
            img = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
            img.save(root / c / f"{k}.{'png' if k % 2 else 'jpg'}", quality=90)
    return root


@pytest.mark.ffcv
@pytest.mark.dali
@pytest.mark.parametrize("mode,codec", [("raw", "png"), ("raw", "jpg"), ("jpg", "jpg"),
                                        ("proportion", "png")])
def test_verify_compares_records_with_the_beton_sample_by_sample(tmp_path, capsys, mode, codec):
    """Two sources with the same layout: the records of one and the .beton of the
    other, with every checksum and hash made consistent (as the converter before
    round 2 wrote when a file changed between its passes): verify must name each
    sample whose pixels (or label) differ, and pass the honest datasets."""
    from pipelines import checks
    from pipelines.integrity import describe
    from tools import convert_dataset, verify_dataset

    a = _make_source(tmp_path / "a")
    b = tmp_path / "b"
    for p in sorted(a.rglob("*")):  # b: a with dog/1.png and cat/2.jpg replaced
        q = b / p.relative_to(a)
        if p.is_dir():
            q.mkdir(parents=True)
        else:
            q.write_bytes(p.read_bytes())
    rng = np.random.default_rng(9)
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(b / "dog" / "1.png")
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(b / "cat" / "2.jpg",
                                                                          quality=90)
    opts = ["--quiet", "--write-mode", mode, "--record-codec", codec, "--workers", "1"]
    for s in ("a", "b"):
        assert convert_dataset.main([str(tmp_path / s), "--out", str(tmp_path / f"o{s}"),
                                     *opts]) == 0
    oa, ob = tmp_path / "oa", tmp_path / "ob"
    assert verify_dataset.main([str(oa), "--quiet"]) == 0  # honest: the same pixels
    capsys.readouterr()

    for name in ("data.beton", checks.BETON_CHECKS):
        (oa / name).write_bytes((ob / name).read_bytes())
    m = json.loads((oa / "manifest.json").read_text())
    for name in ("data.beton", checks.BETON_CHECKS):
        m["integrity"][name] = describe(oa / name)
    m["tables_sha256"] = json.loads((ob / "manifest.json").read_text())["tables_sha256"]
    (oa / "manifest.json").write_text(json.dumps(m))
    assert verify_dataset.main([str(oa), "--quiet"]) == 1
    err = capsys.readouterr().err
    named = [ln for ln in err.splitlines() if ln.startswith("problem:")]
    # sorted order: cat/0.jpg cat/1.png cat/2.jpg cat/3.png dog/0.jpg dog/1.png ...
    assert len(named) == 2 and "sample 2 " in named[0] and "sample 5 " in named[1], err
    assert all("differ" in ln for ln in named), err
