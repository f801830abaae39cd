"""A hostile (or merely unlucky) source and a hostile user get one line, a
non-zero exit (or a named problem), never a hang, never a traceback, never a
payload run, and never a changed or half-written --out (issue 20).

Conversions that could hang or blow up when the code is broken run in another
process with a short timeout, in their own session (``setsid``), so that a hung
converter and its workers are killed and the test fails instead of the suite
hanging; every such run also checks that no process of its group outlives it.
``_cli`` runs the real command line (``python -m tools.convert_dataset``);
``_forked`` runs the same ``cli.run(convert_dataset.main)`` in a fork of this
process after patching in the event under test (a worker killed by SIGKILL, a
source file changed between the two passes, a worker held up so that Ctrl-C
arrives mid-conversion): a fork, not a fresh interpreter, because importing
FFCV takes ~10 s here and the child inherits it already imported (the harness is
tests/convert_harness.py; worker failures are in test_hostile_convert_workers.py)."""

from __future__ import annotations

import json
import os
import pickle
import socket
import struct
from pathlib import Path

import numpy as np
import pytest
from convert_harness import _cli, _make_source, _one_error_line, _snapshot

pytestmark = [pytest.mark.dali]  # the records need DALI's wds2idx


# -- 1. CIFAR pickles: only containers and numpy arrays -----------------------------
class _Payload:
    """Unpickling this runs ``os.system`` (it would create the marker file)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _PathPayload:
    """Another route to code: any callable global (here pathlib's Path.touch)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (Path(self.marker),)


class _Py2Pickler(pickle._Pickler):
    """Writes what Python 2's cPickle wrote (protocol 2), as in the published
    CIFAR files: every string, numpy's dtype codes ('u1', '|') included, as a
    (SHORT_)BINSTRING opcode (read back with encoding="bytes"), not _codecs.encode."""

    def save_bytes(self, obj):
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    def save_str(self, obj):
        self.save_bytes(obj.encode("latin1"))

    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[bytes] = save_bytes
    dispatch[str] = save_str


def _dump(obj, path: Path, style: str) -> None:
    if style == "py2":
        import io
        buf = io.BytesIO()
        _Py2Pickler(buf, protocol=2).dump(obj)
        # The real files name numpy's pre-2.0 module path.
        path.write_bytes(buf.getvalue().replace(b"numpy._core.multiarray",
                                                b"numpy.core.multiarray"))
    else:
        path.write_bytes(pickle.dumps(obj, protocol=int(style)))


def _cifar10(root: Path, style: str, rng) -> tuple[np.ndarray, list[int]]:
    root.mkdir(parents=True)
    _dump({b"label_names": [f"c{k}".encode() for k in range(10)], b"num_vis": 3072},
          root / "batches.meta", style)
    imgs = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    rows = imgs.transpose(0, 3, 1, 2).reshape(3, -1)
    labels = [1, 7, 3]
    _dump({b"batch_label": b"testing batch 1 of 1", b"labels": labels, b"data": rows,
           b"filenames": [b"a.png", b"b.png", b"c.png"]}, root / "test_batch", style)
    return imgs, labels


@pytest.mark.parametrize("style", ["py2", "2", "4", "5"])
def test_cifar_pickles_load_and_a_payload_never_runs(tmp_path, style):
    from conversion.sources import SourceError, open_source

    rng = np.random.default_rng(3)
    good = tmp_path / "good"
    imgs, labels = _cifar10(good, style, rng)
    src = open_source(good, None, "test")  # written like the real ones: still read
    assert src.format == "cifar10" and len(src) == 3 and src.classes[7] == "c7"
    assert [src.label(i) for i in range(3)] == labels
    assert all(np.array_equal(src.read(i), imgs[i]) for i in range(3))

    for payload in (_Payload, _PathPayload):
        bad = tmp_path / f"bad-{payload.__name__}"
        _cifar10(bad, style, rng)
        marker = tmp_path / "PWNED"
        _dump({b"label_names": [b"x"] * 10, b"evil": payload(marker)}, bad / "batches.meta",
              style)
        with pytest.raises(SourceError, match="batches.meta.*refused"):
            open_source(bad, None, "test")
        assert not marker.exists(), "the pickle's payload ran"
        # A payload inside a data batch is refused the same way.
        _cifar10(bad2 := tmp_path / f"bad2-{payload.__name__}", style, rng)
        _dump({b"labels": [0], b"data": np.zeros((1, 3072), np.uint8),
               b"x": payload(marker)}, bad2 / "test_batch", style)
        with pytest.raises(SourceError, match="test_batch.*refused"):
            open_source(bad2, None, "test")
        assert not marker.exists(), "the pickle's payload ran"


def test_cifar_payload_through_the_command_line(tmp_path):
    rng = np.random.default_rng(4)
    src = tmp_path / "cifar"
    _cifar10(src, "4", rng)
    marker = tmp_path / "PWNED"
    _dump({b"label_names": [b"x"] * 10, b"evil": _Payload(marker)}, src / "batches.meta", "2")
    out = tmp_path / "out"
    rc, err, _ = _cli([src, "--split", "test", "--out", out, "--quiet", "--no-beton"])
    line = _one_error_line(err)
    assert rc == 1 and str(src / "batches.meta") in line and "posix.system" in line, err
    assert not marker.exists()
    assert not out.exists()


# -- 2. files that are not files, images that are too big ----------------------------
def _hostile_folder(root: Path) -> dict[str, str]:
    """Good images plus every kind of file that must be skipped; returns the
    expected problem (file -> words of its reason)."""
    _make_source(root, n=2)
    bad = root / "bad"
    bad.mkdir()
    (bad / "ok.png").write_bytes((root / "cat" / "1.png").read_bytes())
    os.mkfifo(bad / "fifo.jpg")  # read_bytes() on it waits for a writer forever
    os.symlink("/dev/zero", bad / "zero.jpg")  # endless bytes
    os.symlink(bad / "fifo.jpg", bad / "link_to_fifo.png")
    os.symlink(tmp := root / "gone.png", bad / "dangling.png")
    assert not tmp.exists()
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(bad / "sock.png"))
    sock.close()
    # A 1.4 MB-class PNG header declaring 38000x38000 (1.44 Gpx: above our 1 Gpx
    # limit, below twice PIL's, where PIL only warns): decoding would need GBs.
    (bad / "huge.png").write_bytes(_png_header(38000, 38000))
    # A sparse 5 GiB "image": reading it whole would take 5 GiB of memory.
    with open(bad / "sparse.jpg", "wb") as f:
        f.truncate(5 << 30)
    return {"bad/fifo.jpg": "not a regular file", "bad/zero.jpg": "not a regular file",
            "bad/link_to_fifo.png": "not a regular file",
            "bad/dangling.png": "cannot read", "bad/sock.png": "not a regular file",
            "bad/huge.png": "too large", "bad/sparse.jpg": "too large"}


def _png_header(w: int, h: int) -> bytes:
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + \
            struct.pack(">I", zlib.crc32(kind + data))
    row = b"\x00" + b"\x00" * w  # one grey row, then the data simply ends
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(row)) + chunk(b"IEND", b""))


def test_hostile_files_are_skipped_and_named_never_read_into_memory(tmp_path):
    src = tmp_path / "src"
    expected = _hostile_folder(src)
    out = tmp_path / "out"
    rc, err, seconds = _cli([src, "--out", out, "--quiet", "--no-beton", "--workers", "2"],
                            memory_limit=3 << 30)
    assert rc == 0 and "Traceback" not in err, err
    m = json.loads((out / "manifest.json").read_text())
    reasons = {p["file"]: p["reason"] for p in m["problems"]}
    assert set(reasons) == set(expected), reasons
    for name, words in expected.items():
        assert words in reasons[name], (name, reasons[name])
        assert name in err  # named on stderr too
    assert m["counts"]["written"] == 5 and m["counts"]["skipped"] == len(expected)


def test_hostile_files_with_strict_write_nothing(tmp_path):
    src = tmp_path / "src"
    _hostile_folder(src)
    out = tmp_path / "out"
    rc, err, _ = _cli([src, "--out", out, "--quiet", "--no-beton", "--strict"],
                      memory_limit=3 << 30)
    assert rc == 1 and "Traceback" not in err and "--strict" in err, err
    assert not out.exists()


def test_image_declaring_too_many_pixels_is_refused_before_decoding():
    from conversion.image_decode import BadImage, load_rgb

    # 1.44 Gpx: PIL merely warns (DecompressionBombWarning) below twice its limit.
    with pytest.raises(BadImage, match="too large: declares 38000x38000"):
        load_rgb(_png_header(38000, 38000))


# -- 4. the user's mistakes: --out inside SRC, ranges, two converters, Ctrl-C -------
@pytest.mark.parametrize("where", ["same", "inside", "around", "link"])
def test_out_overlapping_the_source_is_refused_before_any_work(tmp_path, where):
    from tools import convert_dataset

    src = _make_source(tmp_path / "src")
    (tmp_path / "link").symlink_to(src)
    out = {"same": src, "inside": src / "records", "around": tmp_path,
           "link": tmp_path / "link" / "out"}[where]
    before = _snapshot(tmp_path)
    rc, err, _ = _cli([src, "--out", out, "--quiet", "--no-beton"])
    line = _one_error_line(err)
    assert rc == 1 and str(out) in line and str(src) in line, err
    assert _snapshot(tmp_path) == before
    assert convert_dataset  # imported: the module's checks run before any work


@pytest.mark.parametrize("option,value", [
    ("--compress-probability", "2"), ("--compress-probability", "nan"),
    ("--compress-probability", "-0.5"), ("--quality", "0"), ("--quality", "101"),
    ("--max-res", "0"), ("--max-res", "70000"), ("--shard-size", "0"),
    ("--shard-size", "100000000"), ("--workers", "0"), ("--workers", "5000")])
def test_numeric_options_out_of_range_are_one_line_before_any_work(tmp_path, capsys,
                                                                   option, value):
    from tools import convert_dataset

    src = _make_source(tmp_path / "src")
    out = tmp_path / "out"
    # parse_args alone: were a value let through, no conversion (of 5000 workers) starts
    with pytest.raises(SystemExit) as e:
        convert_dataset.parse_args([str(src), "--out", str(out), "--quiet", option, value])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    line = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(line) == 1 and option in line[0] and value in line[0] and "[" in line[0], err
    assert not out.exists()


def test_second_converter_on_one_out_is_refused_naming_the_first(tmp_path):
    from pipelines.folder_lock import FolderLock

    src = _make_source(tmp_path / "src")
    out = tmp_path / "out"
    out.mkdir()
    with FolderLock(out, "convert_dataset"):
        before = _snapshot(out)
        rc, err, _ = _cli([src, "--out", out, "--quiet", "--no-beton"])
        line = _one_error_line(err)
        assert rc == 1 and f"PID {os.getpid()}" in line and str(out) in line, err
        assert _snapshot(out) == before


