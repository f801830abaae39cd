"""Damaged data is named, not crashed on: truncated or replaced shards and
.beton files at start, a damaged JPEG inside a shard when it is read, and class
folders without a readable image at conversion."""

import json
import shutil

import pytest
from conftest import run_tool

from pipelines.integrity import check_sizes, verify
from pipelines.records import Records


@pytest.fixture()
def converted(tmp_path):
    from tools import convert_dataset, make_synthetic

    make_synthetic.generate(tmp_path / "img", (40, 40), 40, 0, seed=2, quiet=True)
    rc = convert_dataset.main([str(tmp_path / "img"), "--split", "train", "--out",
                               str(tmp_path / "c"), "--write-mode", "raw", "--quiet",
                               "--shard-size", "16"])
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
