"""Running the converter where it could hang or blow up (tests/test_hostile_convert*.py).

Conversions run in another process with a short timeout, in their own session
(``setsid``), so that a hung converter and its workers are killed and the test
fails instead of the suite hanging; every such run also checks that no process
of its group outlives it. ``_cli`` runs the real command line (``python -m
tools.convert_dataset``); ``_forked`` runs the same ``cli.run(convert_dataset.main)``
in a fork of the test process after patching in the event under test (a worker
killed by SIGKILL, a source file changed between the two passes, a worker held
up so that Ctrl-C arrives mid-conversion): a fork, not a fresh interpreter,
because importing FFCV takes ~10 s here and the child inherits it already imported."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import HAVE_FFCV, ROOT
from PIL import Image

from pipelines import cli


# -- helpers -------------------------------------------------------------------------
def _make_source(root: Path, n: int = 4, seed: int = 0) -> Path:
    """root/<class>/<image>: two classes, PNGs and JPEGs of 16x16 random pixels."""
    rng = np.random.default_rng(seed)
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for k in range(n):
            img = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
            img.save(root / c / f"{k}.{'png' if k % 2 else 'jpg'}", quality=90)
    return root


def _snapshot(folder: Path):
    """Every path under folder with its bytes (None: missing folder)."""
    if not folder.exists():
        return None
    return {p.relative_to(folder).as_posix(): (p.read_bytes() if p.is_file() else "dir")
            for p in sorted(folder.rglob("*"))}


def _wait(pid: int, t0: float, timeout: float, interrupt_when: Path | None) -> int:
    """Wait for process ``pid`` (a session leader) and its group; returns its exit
    status. Sends SIGINT to the group once ``interrupt_when`` exists."""
    interrupted = interrupt_when is None
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if not interrupted and interrupt_when.exists():
            time.sleep(0.3)  # the other workers busy or idle, as they would be
            os.killpg(pid, signal.SIGINT)  # what Ctrl-C in a terminal does
            interrupted = True
        if time.monotonic() - t0 > timeout:
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"the converter still ran after {timeout} s (hung)")
        time.sleep(0.02)
    for _ in range(100):  # its workers must be gone with it
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.killpg(pid, signal.SIGKILL)
        pytest.fail("processes of the converter outlived it")
    return os.waitstatus_to_exitcode(status)


def _cli(argv, timeout: float = 60, memory_limit: int | None = None) -> tuple[int, str, float]:
    """``python -m tools.convert_dataset ARGV`` in a new session: (status, stderr, seconds)."""
    def limit():
        if memory_limit:  # a broken converter gets MemoryError, not the machine's memory
            resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))

    t0 = time.monotonic()
    with tempfile.TemporaryFile() as err:
        p = subprocess.Popen([sys.executable, "-m", "tools.convert_dataset", *map(str, argv)],
                             cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err,
                             start_new_session=True, preexec_fn=limit)
        rc = _wait(p.pid, t0, timeout, None)
        p.returncode = rc  # reaped by _wait
        err.seek(0)
        return rc, err.read().decode(errors="replace"), time.monotonic() - t0


def _forked(argv, patch=None, timeout: float = 60,
            interrupt_when: Path | None = None) -> tuple[int, str, float]:
    """``cli.run(convert_dataset.main, ARGV)`` in a fork of this process, in a new
    session, after ``patch()`` ran there (only there): (status, stderr, seconds).
    stderr is the file descriptor itself, so that a worker's traceback counts."""
    from conversion import wds_writer  # noqa: F401 - imported once, here
    from tools import convert_dataset
    if HAVE_FFCV:
        import ffcv.fields  # noqa: F401
        import ffcv.reader  # noqa: F401
        import ffcv.writer  # noqa: F401

        import pipelines.checks  # noqa: F401

    t0 = time.monotonic()
    with tempfile.TemporaryFile() as err:
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            code = 99
            try:
                os.setsid()
                import faulthandler
                faulthandler.disable()  # pytest's, inherited: the command line has none
                os.dup2(err.fileno(), 2)
                os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
                sys.stdout = open(1, "w", closefd=False)
                sys.stderr = open(2, "w", closefd=False)
                if patch is not None:
                    patch()
                code = cli.run(convert_dataset.main, "convert_dataset", [str(a) for a in argv])
            except BaseException:  # noqa: BLE001 - shown to the test as a failure
                import traceback
                traceback.print_exc()
            finally:
                sys.stderr.flush()
                os._exit(code)
        rc = _wait(pid, t0, timeout, interrupt_when)
        err.seek(0)
        return rc, err.read().decode(errors="replace"), time.monotonic() - t0


_PASS = {"second": False}  # in a forked child: set once the .beton pass starts


def _on_read(path_suffix: str, second_pass: bool, action) -> None:
    """Patch (in a forked child): ``action(path)`` when the source reads the file
    ending in ``path_suffix`` during the records pass, or during the .beton pass."""
    from conversion import sources
    from tools import convert_dataset

    write_beton = convert_dataset.write_beton

    def second(*a, **k):  # FFCV's workers fork after this: they see it set
        _PASS["second"] = True
        return write_beton(*a, **k)

    read = sources.ImageFolder.read

    def patched(self, i):
        if self.files[i].as_posix().endswith(path_suffix) and _PASS["second"] == second_pass:
            action(self.files[i])
        return read(self, i)

    convert_dataset.write_beton = second
    sources.ImageFolder.read = patched


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("convert_dataset: error: "), err
    return lines[0]


def _no_stage_left(out: Path) -> None:
    if out.exists():
        assert not [p for p in out.iterdir() if p.name.startswith(".partial-")], \
            list(out.iterdir())
