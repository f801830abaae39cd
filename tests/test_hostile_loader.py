"""Failures inside the loaders reach the user as one line: a DataLoader worker's
exception (torch wraps it with the worker's whole traceback) and DALI's
multi-line "Critical error in pipeline"; and a dataset without per-sample
checksums (converted before tool 1.3) never hands a zeroed image to a decoder."""

import json
import shutil

import pytest
from conftest import device_for, every_backend

from pipelines import cli
from pipelines.build import LoaderConfig, build_loader
from pipelines.integrity import describe
from pipelines.records import Records


def test_a_dataloader_workers_exception_is_one_line(tiny_dataset, tmp_path, capsys):
    """The shard is deleted after the loader opened it (a dataset removed while a
    run reads it): each worker maps its shards lazily, so the error is raised in
    a worker and torch re-raises it with the worker's traceback in the message."""
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    cfg = LoaderConfig(data=str(data), backend="torchvision", size=16, batch_size=32,
                       workers=1, device="cpu")
    loader = build_loader(cfg)
    for tar in (data / "records").glob("*.tar"):
        tar.unlink()

    def main(argv):
        loader.set_epoch(0)
        for _ in loader:
            pass

    assert cli.run(main, "trainer.run", []) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "No such file or directory" in err and "shard-000000.tar" in err


def _pre_checksums(src, dst):
    """``src`` as a converter before version 1.3 wrote it (no per-sample checksums)."""
    shutil.copytree(src, dst)
    m = json.loads((dst / "manifest.json").read_text())
    m["tool_version"] = "1.2"
    m["integrity"] = {k: v for k, v in m["integrity"].items() if "crc32" not in k}
    (dst / "records" / "samples.crc32").unlink()
    (dst / "manifest.json").write_text(json.dumps(m))
    return m


@pytest.mark.parametrize("backend", every_backend(without=("ffcv",)))
def test_a_zeroed_image_without_checksums_is_skipped_not_decoded(tiny_dataset, tmp_path,
                                                                  capsys, backend):
    """A dataset converted before per-sample checksums (tool < 1.3) with one image
    zeroed in place (the shard keeps its size): the sample is named and skipped,
    never handed to a decoder. DALI 2.4's CPU decoder crashed the whole process
    (SIGSEGV) on such a sample in the first batches, so raising is not enough."""
    data = tmp_path / "old"
    m = _pre_checksums(tiny_dataset, data)
    rec = Records(data)
    shard, off, size = (int(x) for x in rec.entries[5][:3])
    tar = data / "records" / rec.tars[shard].rsplit("/", 1)[-1]
    raw = bytearray(tar.read_bytes())
    raw[off:off + size] = bytes(size)  # the size stays: only a checksum would notice
    tar.write_bytes(bytes(raw))
    m["integrity"] = {k: describe(data / k) for k in m["integrity"]}
    (data / "manifest.json").write_text(json.dumps(m))
    cfg = LoaderConfig(data=str(data), backend=backend, size=16, batch_size=32, workers=1,
                       device=device_for(backend), shuffle=False)
    loader = build_loader(cfg)
    loader.set_epoch(0)
    first = next(iter(loader))
    err = capsys.readouterr().err
    assert "skipped sample 5 (" in err and "not a JPEG or PNG image" in err, err
    assert 5 not in first.index.tolist() and len(first.index) == 32  # its slot repeats another


def test_one_line_keeps_what_went_wrong():
    """The reduction itself, on the two shapes of message seen in the field."""
    torch_style = ("Caught ValueError in DataLoader worker process 0.\nOriginal Traceback "
                   "(most recent call last):\n  File \"x.py\", line 1, in f\n    g()\n"
                   "ValueError: the real reason")
    assert cli.one_line(torch_style) == "ValueError: the real reason"
    dali_style = ("Critical error in pipeline:\nError in CPU operator `nvidia.dali.fn.resize`,\n"
                  "which was used in the pipeline definition with the following traceback:\n\n"
                  "  File \"p.py\", line 3\n\nencountered:\n\nbad roi\n"
                  "Current pipeline object is no longer valid.")
    assert cli.one_line(dali_style) == "Error in CPU operator `nvidia.dali.fn.resize`: bad roi"
    assert len(cli.one_line("x" * 10_000)) == cli.MESSAGE_LIMIT
    bomb = [1]
    for _ in range(60):  # 2**60 leaves if expanded: reprlib never walks that far
        bomb = [bomb, bomb]
    assert len(cli.shown(bomb)) <= 200
