"""The converter's workers under a hostile source or user: a worker killed or
raising in either pass, a source file changed between the passes, Ctrl-C to the
process group. Each ends the conversion within seconds with one line naming the
file, leaving nothing that looks complete (issue 20; harness: convert_harness.py)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from convert_harness import (
    _forked,
    _make_source,
    _no_stage_left,
    _on_read,
    _one_error_line,
    _snapshot,
)

pytestmark = [pytest.mark.dali]  # the records need DALI's wds2idx



# -- 3. worker failures end the conversion, naming the file ---------------------------
def _kill(path):
    os.kill(os.getpid(), signal.SIGKILL)  # as the out-of-memory killer would


def _log_shared_memory(log: Path) -> None:
    """Patch (in a forked child): note the name of every shared memory segment."""
    from multiprocessing import shared_memory

    init = shared_memory.SharedMemory.__init__

    def logged(self, *a, **k):
        init(self, *a, **k)
        with open(log, "a") as f:
            f.write(self._name + "\n")

    shared_memory.SharedMemory.__init__ = logged


@pytest.mark.parametrize("second_pass", [False, pytest.param(True, marks=pytest.mark.ffcv)],
                         ids=["records-pass", "beton-pass"])
def test_worker_killed_ends_the_conversion_naming_the_file(tmp_path, second_pass):
    src = _make_source(tmp_path / "src", n=6)
    out = tmp_path / "out"
    log = tmp_path / "shm.log"

    def patch():
        _on_read("dog/3.png", second_pass, _kill)
        _log_shared_memory(log)

    rc, err, seconds = _forked([src, "--out", out, "--quiet", "--workers", "2",
                                *([] if second_pass else ["--no-beton"])], patch)
    line = _one_error_line(err)
    assert rc == 1 and "dog/3.png" in line and "SIGKILL" in line, err
    assert seconds < 30
    assert not out.exists()
    assert second_pass == log.exists()
    for name in (log.read_text().split() if log.exists() else []):
        assert not Path("/dev/shm", name.lstrip("/")).exists(), "shared memory left behind"


def _raise(path):
    raise ZeroDivisionError("a bug, not bad data")


@pytest.mark.parametrize("second_pass", [False, pytest.param(True, marks=pytest.mark.ffcv)],
                         ids=["records-pass", "beton-pass"])
def test_worker_exception_ends_the_conversion_naming_the_file(tmp_path, second_pass):
    src = _make_source(tmp_path / "src", n=6)
    out = tmp_path / "out"
    rc, err, seconds = _forked([src, "--out", out, "--quiet", "--workers", "2",
                                *([] if second_pass else ["--no-beton"])],
                               lambda: _on_read("dog/3.png", second_pass, _raise))
    line = _one_error_line(err)
    assert rc == 1 and "dog/3.png" in line and "ZeroDivisionError" in line, err
    assert seconds < 30 and not out.exists()


def _change(how: str):
    def act(target: Path) -> None:
        if how == "replaced":  # another valid image of the same size
            target.write_bytes((target.parent.parent / "cat" / target.name).read_bytes())
        elif how == "deleted":
            target.unlink()
        elif how == "fifo":
            target.unlink()
            os.mkfifo(target)
        elif how == "truncated":
            target.write_bytes(target.read_bytes()[:40])
    return act


@pytest.mark.ffcv
@pytest.mark.parametrize("how", ["replaced", "deleted", "fifo", "truncated"])
def test_source_changed_between_the_passes_is_named_and_nothing_written(tmp_path, how):
    src = _make_source(tmp_path / "src", n=6)
    out = tmp_path / "out"
    rc, err, _ = _forked([src, "--out", out, "--quiet", "--no-beton"])
    assert rc == 0, err
    before = _snapshot(out)  # an earlier output: kept as it is
    # Changed just before the .beton pass reads it (the records pass read it whole).
    rc, err, seconds = _forked([src, "--out", out, "--quiet", "--workers", "2",
                                "--write-mode", "raw", "--overwrite"],
                               lambda: _on_read("dog/3.png", True, _change(how)))
    line = _one_error_line(err)
    assert rc == 1 and "dog/3.png" in line and "changed while converting" in line, err
    assert seconds < 30
    assert _snapshot(out) == before
    _no_stage_left(out)


@pytest.mark.ffcv
def test_memory_mapped_source_truncated_between_the_passes_is_named(tmp_path):
    """STL-10 is read through a memory map: a file truncated under it kills the
    reader with SIGBUS, which must end the conversion naming the sample."""
    from tools import convert_dataset

    src = tmp_path / "stl"
    src.mkdir()
    rng = np.random.default_rng(5)
    (src / "train_X.bin").write_bytes(rng.integers(0, 256, 4 * 3 * 96 * 96, np.uint8).tobytes())
    (src / "train_y.bin").write_bytes(bytes([1, 2, 3, 4]))

    def patch():
        write_beton = convert_dataset.write_beton

        def truncated_first(*a, **k):
            os.truncate(src / "train_X.bin", 0)
            return write_beton(*a, **k)
        convert_dataset.write_beton = truncated_first

    out = tmp_path / "out"
    rc, err, seconds = _forked([src, "--out", out, "--quiet", "--workers", "1"], patch)
    line = _one_error_line(err)
    assert rc == 1 and "train_X.bin[0]" in line and "SIGBUS" in line, err
    assert seconds < 30 and not out.exists()


def _hold(mark: Path):
    def act(path):
        mark.touch()
        time.sleep(120)  # held up: the Ctrl-C arrives now
    return act


@pytest.mark.parametrize("second_pass", [False, pytest.param(True, marks=pytest.mark.ffcv)],
                         ids=["records-pass", "beton-pass"])
def test_ctrl_c_to_the_process_group_is_one_line_and_leaves_nothing(tmp_path, second_pass):
    src = _make_source(tmp_path / "src", n=40)  # enough for every worker to have work
    out = tmp_path / "out"
    mark = tmp_path / "reached"
    rc, err, seconds = _forked([src, "--out", out, "--quiet", "--workers", "4",
                                *([] if second_pass else ["--no-beton"])],
                               lambda: _on_read("dog/3.png", second_pass, _hold(mark)),
                               interrupt_when=mark)
    assert mark.exists()
    assert rc == 130 and err.strip() == "convert_dataset: interrupted; nothing was written", err
    assert seconds < 30
    assert not out.exists()


def test_ctrl_c_with_an_earlier_output_keeps_it(tmp_path):
    src = _make_source(tmp_path / "src", n=40)
    out = tmp_path / "out"
    rc, err, _ = _forked([src, "--out", out, "--quiet", "--no-beton"])
    assert rc == 0, err
    before = _snapshot(out)
    mark = tmp_path / "reached"
    rc, err, _ = _forked([src, "--out", out, "--quiet", "--no-beton", "--overwrite",
                          "--workers", "4"], lambda: _on_read("dog/3.png", False, _hold(mark)),
                         interrupt_when=mark)
    assert rc == 130 and err.strip() == "convert_dataset: interrupted; nothing was written", err
    assert _snapshot(out) == before
    _no_stage_left(out)

