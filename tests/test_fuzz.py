"""Fuzz: mutated bytes fed to the converter and to every reader. Nothing may
crash uncontrolled (an exception other than a named ValueError /
FileNotFoundError, a traceback, a segfault) and no damaged sample may reach a
Batch: after any mutation a loader either refuses with a message naming a file
of the dataset, or yields batches in which every slot holds exactly the clean
pixels of the sample it names (pipelines/checks.py)."""

import random
import shutil

import pytest
from conftest import NO_BETON, device_for, every_backend

from pipelines.build import LoaderConfig, build_loader
from pipelines.records import Records, open_rgb

TRIALS = {"torchvision": 12, "dali-cpu": 12, "dali-gpu": 6, "ffcv": 6}


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    from tools import convert_dataset, make_synthetic

    root = tmp_path_factory.mktemp("fuzz")
    make_synthetic.generate(root / "img", (40, 40), 24, 0, seed=4, quiet=True)
    rc = convert_dataset.main([str(root / "img"), "--split", "train", "--out",
                               str(root / "c"), "--quiet", "--shard-size", "12", *NO_BETON])
    assert rc == 0
    return root


def mutate(folder, rng: random.Random) -> str:
    """One random damage to one file of a converted dataset; says which."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    path = rng.choice(files)
    raw = bytearray(path.read_bytes())
    kind = rng.choice(["flip", "flip", "zero", "truncate"])
    if path.suffix == ".tar" and rng.random() < 0.7:  # mostly inside a sample's bytes
        rec = Records(folder)
        k = int(path.stem.split("-")[1])
        rows = rec.entries[rec.entries[:, 0] == k]
        _, off, size, moff, msize = rows[rng.randrange(len(rows))].tolist()
        lo, hi = (off, off + size) if rng.random() < 0.8 else (moff, moff + msize)
    else:
        lo, hi = 0, len(raw)
    at = rng.randrange(lo, max(lo + 1, hi))
    if kind == "flip":
        raw[at] ^= 1 << rng.randrange(8)
    elif kind == "zero":
        raw[at:at + 64] = bytes(len(raw[at:at + 64]))
    else:
        del raw[at:]
    path.write_bytes(bytes(raw))
    return f"{kind} {path.relative_to(folder)} at {at}"


def one_epoch(data, backend):
    loader = build_loader(LoaderConfig(data=str(data), backend=backend, size=16, batch_size=8,
                                       shuffle=False, drop_last=False, workers=1,
                                       device=device_for(backend), keep_raw=True))
    loader.set_epoch(0)
    return [(b.index.to("cpu", copy=True), [v.to("cpu", copy=True) for v in b.raw])
            for b in loader]


@pytest.mark.parametrize("backend", every_backend())
def test_readers_refuse_or_skip_but_never_pass_damage(clean, backend, tmp_path):
    want = {int(i): [v[j] for v in views]
            for idx, views in one_epoch(clean / "c", backend) for j, i in enumerate(idx)}
    rng = random.Random(f"fuzz-{backend}")
    outcomes = {"refused": 0, "trained": 0}
    for trial in range(TRIALS[backend]):
        data = tmp_path / f"t{trial}"
        shutil.copytree(clean / "c", data)
        what = mutate(data, rng)
        try:
            got = one_epoch(data, backend)
        except (ValueError, FileNotFoundError) as e:
            assert str(data) in str(e), f"{what}: the message names no file: {e}"
            outcomes["refused"] += 1
            continue
        outcomes["trained"] += 1
        for idx, views in got:
            for j, i in enumerate(idx.tolist()):
                assert all((v[j] == w).all() for v, w in zip(views, want[i])), \
                    f"{what}: sample {i} reached a batch with other pixels"
        shutil.rmtree(data)
    print(backend, outcomes)


def test_converter_survives_mutated_sources(clean, tmp_path, capsys):
    from tools import convert_dataset

    rng = random.Random("fuzz-convert")
    for trial in range(6):
        src = tmp_path / f"s{trial}"
        shutil.copytree(clean / "img" / "train", src)
        images = sorted(p for p in src.rglob("*") if p.is_file())
        for path in rng.sample(images, 4):
            raw = bytearray(path.read_bytes())
            kind = rng.choice(["flip", "truncate", "garbage", "empty"])
            if kind == "flip":
                for _ in range(8):
                    raw[rng.randrange(len(raw))] ^= 0xFF
            elif kind == "truncate":
                del raw[rng.randrange(len(raw)):]
            elif kind == "garbage":
                raw = bytearray(rng.randbytes(len(raw)))
            else:
                raw = bytearray()
            path.write_bytes(bytes(raw))
        out = tmp_path / f"o{trial}"
        rc = convert_dataset.main([str(src), "--out", str(out), "--quiet", "--workers", "1",
                                   *NO_BETON])
        err = capsys.readouterr().err
        assert rc in (0, 1) and "Traceback" not in err
        if rc == 1:
            assert not (out / "manifest.json").exists()
            continue
        rec = Records(out)
        c = rec.manifest["counts"]
        assert c["written"] + c["skipped"] == c["candidates"] == len(images)
        for p in rec.manifest["problems"]:
            assert p["file"] and p["reason"] and p["file"] in err
        for i in range(len(rec)):  # everything written decodes, and matches its checksum
            open_rgb(rec[i][0])
        assert not rec.damaged(range(len(rec))).any()
