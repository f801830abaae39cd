"""A sample whose bytes were damaged after conversion (same file size, so the
start-time checks pass) never reaches a decoder or a Batch, on every backend:
with on_damaged="skip" its slot repeats the batch's first good sample and it is
counted; with "stop" the loader raises naming the sample and its file. The
trainer checkpoints before stopping and resumes with skip."""

import json

import numpy as np
import pytest
import torch
from conftest import HAVE_FFCV, device_for, every_backend

from pipelines.build import LoaderConfig, build_loader
from pipelines.checks import DamagedSample
from pipelines.records import Records

DAMAGED = 5  # dataset index of the damaged sample


@pytest.fixture()
def converted(tmp_path):
    from tools import convert_dataset, make_synthetic

    make_synthetic.generate(tmp_path / "img", (40, 40), 32, 0, seed=2, quiet=True)
    rc = convert_dataset.main([str(tmp_path / "img"), "--split", "train", "--out",
                               str(tmp_path / "c"), "--quiet", "--shard-size", "16",
                               *([] if HAVE_FFCV else ["--no-beton"])])
    assert rc == 0
    return tmp_path / "c"


def damage(converted, i: int = DAMAGED) -> None:
    """Flip bytes in the middle of sample i's JPEG in the records and the .beton."""
    rec = Records(converted)
    k, off, size = (int(x) for x in rec.entries[i][:3])
    _flip(converted / "records" / f"shard-{k:06d}.tar", off + size // 2)
    if (converted / "data.beton").is_file():
        from ffcv.reader import Reader

        from pipelines.checks import beton_sample_bytes
        ptr, size = beton_sample_bytes(Reader(str(converted / "data.beton")))
        _flip(converted / "data.beton", int(ptr[i]) + int(size[i]) // 2)


def _flip(path, at: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[at:at + 4] = bytes(b ^ 0x5A for b in raw[at:at + 4])
    path.write_bytes(bytes(raw))


def epoch(data, backend, on_damaged="skip"):
    loader = build_loader(LoaderConfig(data=str(data), backend=backend, size=16, batch_size=8,
                                       shuffle=False, drop_last=False, workers=1,
                                       device=device_for(backend), keep_raw=True,
                                       on_damaged=on_damaged))
    loader.set_epoch(0)
    return loader, [(b.index.to("cpu", copy=True), [v.to("cpu", copy=True) for v in b.raw])
                    for b in loader]


@pytest.mark.parametrize("backend", every_backend())
def test_damaged_sample_is_skipped_or_stops(converted, backend, capfd):
    _, clean = epoch(converted, backend)
    by_index = {int(i): [v[j] for v in views] for idx, views in clean for j, i in enumerate(idx)}
    damage(converted)
    loader, got = epoch(converted, backend)
    assert loader.damage.count == 1
    assert "sample 5 (" in capfd.readouterr().err
    assert [len(idx) for idx, _ in got] == [len(idx) for idx, _ in clean]  # sizes kept
    seen = [int(i) for idx, _ in got for i in idx]
    assert DAMAGED not in seen and len(seen) == len(by_index)
    # every slot holds exactly the clean pixels of the sample it names: the damaged
    # one's slot repeats its batch's first sample
    for idx, views in got:
        for j, i in enumerate(idx.tolist()):
            for v, want in zip(views, by_index[i]):
                assert (v[j] == want).all()
    first_of_batch = DAMAGED - DAMAGED % 8
    assert seen[DAMAGED] == first_of_batch

    with pytest.raises(DamagedSample, match=r"sample 5 \(.*(shard-000000\.tar|data\.beton)"):
        epoch(converted, backend, on_damaged="stop")


def test_trainer_stops_with_a_checkpoint_then_resumes_with_skip(converted, tmp_path, capsys):
    from trainer import run

    damage(converted, 20)
    out = tmp_path / "run"
    args = ["--data", str(converted), "--out", str(out), "--backend", "torchvision",
            "--backbone", "small", "--size", "16", "--batch-size", "8", "--epochs", "2",
            "--workers", "0", "--device", "cpu", "--no-progress", "--log-every", "1"]
    rc = run.main(args + ["--on-damaged", "stop"])
    err = capsys.readouterr().err
    assert rc == 1 and "sample 20 (" in err and "--on-damaged skip" in err
    # the backbone next to the checkpoint is the checkpoint's, marked unfinished
    from trainer.checkpoint import backbone_info
    at = torch.load(out / "checkpoint.pt", weights_only=True)["step"]
    assert backbone_info(out) == {"step": at, "finished": False}
    rc = run.main(["--out", str(out), "--resume", "--on-damaged", "skip", "--no-progress",
                   "--workers", "0"])
    assert rc == 0, capsys.readouterr().err
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 8 and rows[-1]["damaged_samples"] == 2  # once per epoch
    assert np.isfinite(rows[-1]["loss"])


def test_verify_tool_names_the_damaged_sample(converted, capsys):
    from tools import verify_dataset

    assert verify_dataset.main([str(converted), "--quiet"]) == 0
    damage(converted, 9)
    assert verify_dataset.main([str(converted), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "shard-000000.tar: " in err and "sample 9 (" in err
    if (converted / "data.beton").is_file():
        assert f"sample 9 ({converted / 'data.beton'}): checksum mismatch" in err


def test_numba_crc_equals_zlib():
    import zlib

    from pipelines.checks import _crc32_table_loop, crc32_nb
    rng = np.random.default_rng(0)
    for n in (0, 1, 7, 4096, 100_003):
        data = rng.integers(0, 256, n, dtype=np.uint8)
        assert crc32_nb(data) == _crc32_table_loop(data) == zlib.crc32(data.tobytes())
