"""A tool replaces only what it wrote itself (conversion/staging.py): make_synthetic's
--overwrite on a folder of the user's images, a user's file slipped into the
tool's own output, a folder another process holds, a crash in the middle of a
commit, a .partial-* folder that is not ours."""

import os

import pytest

from conversion import staging
from tools import make_synthetic


def _tree(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _make(out, *extra):
    return make_synthetic.main(["--out", str(out), "--n-train", "8", "--n-test", "4",
                                "--size", "16", "--quiet", "--workers", "1", *extra])


def test_overwrite_never_deletes_a_users_folder(tmp_path, capsys):
    """The reported case: D/train/cat/x.png, then make_synthetic --out D --overwrite."""
    out = tmp_path / "D"
    (out / "train" / "cat").mkdir(parents=True)
    (out / "train" / "cat" / "x.png").write_bytes(b"my photo")
    before = _tree(out)
    assert _make(out, "--overwrite") == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--overwrite refused" in err, err
    assert _tree(out) == before and sorted(os.listdir(out)) == ["train"]


def test_overwrite_replaces_the_tools_own_output_and_nothing_else(tmp_path, capsys):
    out = tmp_path / "D"
    assert _make(out) == 0
    assert _make(out) == 1 and "pass --overwrite" in capsys.readouterr().err
    assert _make(out, "--overwrite", "--seed", "1") == 0  # its own output: replaced
    first = _tree(out)
    some_class = next(p for p in (out / "train").iterdir() if p.is_dir())
    (some_class / "mine.jpg").write_bytes(b"added by hand")  # a stranger inside
    assert _make(out, "--overwrite", "--seed", "2") == 1
    err = capsys.readouterr().err
    assert f"{some_class.name}/mine.jpg" in err and "not written by make_synthetic" in err
    assert _tree(out) == {**first, f"train/{some_class.name}/mine.jpg": b"added by hand"}


def test_a_held_output_folder_is_refused_naming_the_holder(tmp_path, capsys):
    out = tmp_path / "D"
    out.mkdir()
    from pipelines.folder_lock import FolderLock

    with FolderLock(out, "convert_dataset"):
        assert _make(out) == 1
    err = capsys.readouterr().err
    assert f"in use by convert_dataset (PID {os.getpid()})" in err, err
    assert os.listdir(out) == []  # the holder's lock file went with it; nothing written


def test_a_crash_mid_commit_leaves_everything_accounted_for(tmp_path, monkeypatch):
    """Killed between two renames of a commit: old and new entries are mixed in the
    folder, and the owned list names both, so the next --overwrite still succeeds
    (and refuses nothing of ours as a stranger)."""
    out = tmp_path / "D"
    assert _make(out) == 0
    real = os.replace
    moved = []

    def dies_after_one(src, dst):
        real(src, dst)
        if str(src).startswith(str(out / staging.PARTIAL_PREFIX)) and \
                not str(dst).endswith(staging.OWNED_LIST):
            moved.append(dst)
            if len(moved) == 2:
                raise OSError(5, "simulated crash")

    monkeypatch.setattr(staging.os, "replace", dies_after_one)
    with pytest.raises(OSError, match="simulated crash"):
        make_synthetic.generate(out, (16, 16), 9, 4, seed=3, workers=1, overwrite=True,
                                quiet=True)
    monkeypatch.setattr(staging.os, "replace", real)
    assert make_synthetic.generate(out, (16, 16), 10, 4, seed=4, workers=1, overwrite=True,
                                   quiet=True)["counts"]["train"] == 10
    assert len(list((out / "train").rglob("*.jpg"))) == 10


def test_a_partial_folder_that_is_not_a_stage_is_left_alone(tmp_path):
    out = tmp_path / "D"
    assert _make(out) == 0
    mine = out / ".partial-999999"  # a user's folder that happens to look like ours
    mine.mkdir()
    (mine / "keep.txt").write_text("mine")
    staged = staging.StagedOutput(out, ["train", "test", "synthetic.json"], overwrite=True,
                                  tool="make_synthetic")
    with pytest.raises(staging.OutputError, match=r"\.partial-999999"):
        with staged:
            pass
    assert (mine / "keep.txt").read_text() == "mine"


def test_ctrl_c_to_the_process_group_is_one_line_and_leaves_nothing(tmp_path):
    """A terminal's Ctrl-C reaches every process of the group: the workers must leave
    it to the parent (no 'Process ForkPoolWorker-2: Traceback'), and the parent
    leaves no .partial-* folder and no output."""
    import signal
    import subprocess
    import sys
    import time

    from conftest import ROOT

    out = tmp_path / "D"
    p = subprocess.Popen([sys.executable, "-m", "tools.make_synthetic", "--out", str(out),
                          "--n-train", "100000", "--n-test", "0", "--size", "32", "--quiet",
                          "--workers", "2"], cwd=ROOT, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    deadline = time.time() + 60
    while not any(out.glob(".partial-*/train/*/*.jpg")):  # the workers are drawing
        assert p.poll() is None and time.time() < deadline
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGINT)
    err = p.communicate(timeout=60)[1]
    assert p.returncode == 130 and err.strip() == "make_synthetic: interrupted", err
    assert not out.exists()
