"""--resume auto (issue 24.4): a requeued job runs the same command again. It
resumes when --out holds the run's checkpoint, starts a new run in a missing or
empty folder, and refuses a folder holding anything else, changing nothing."""

import json
import subprocess
from pathlib import Path

import pytest
import trainrun

from trainer.config import from_argv


def _run(*a):
    return subprocess.run(trainrun.cmd(*a), capture_output=True, text=True, cwd=trainrun.ROOT,
                          timeout=600)


def _steps(run: Path) -> list[int]:
    return [json.loads(ln)["step"] for ln in (run / "metrics.jsonl").read_text().splitlines()
            if "loss" in json.loads(ln)]


def test_the_same_command_twice_is_one_run(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    same = trainrun.args(tiny_dataset, run, "--device", "cpu", "--resume", "auto")
    first = _run(*same, "--max-steps", "2")
    assert first.returncode == 0, first.stderr[-2000:]
    assert _steps(run) == [1, 2]
    started = json.loads((run / "config.json").read_text())
    second = _run(*same, "--max-steps", "4")
    assert second.returncode == 0, second.stderr[-2000:]
    # one run: its metrics go 1..4, the steps of the first command kept, no restart at 1
    assert _steps(run) == [1, 2, 3, 4]
    resumed = json.loads((run / "config.json").read_text())
    assert resumed["config"]["seed"] == started["config"]["seed"]
    assert resumed["config"]["resume"] is True and started["config"]["resume"] is False


def test_auto_starts_in_a_missing_or_empty_folder(tiny_dataset, tmp_path):
    for run in (tmp_path / "new", tmp_path / "empty"):
        if run.name == "empty":
            run.mkdir()
        cfg = from_argv(trainrun.args(tiny_dataset, run, "--resume", "auto"))
        assert cfg.resume is False


def test_auto_resumes_where_a_checkpoint_is(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    r = _run(*trainrun.args(tiny_dataset, run, "--device", "cpu", "--max-steps", "1"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert from_argv(trainrun.args(tiny_dataset, run, "--resume", "auto")).resume is True


@pytest.mark.parametrize("what", ["foreign", "run_without_checkpoint"])
def test_auto_refuses_a_folder_holding_anything_else(tiny_dataset, tmp_path, what):
    run = tmp_path / "run"
    if what == "foreign":
        run.mkdir()
        (run / "notes.txt").write_text("mine\n")
    else:  # a run killed before its first checkpoint: its files are not a checkpoint
        r = _run(*trainrun.args(tiny_dataset, run, "--device", "cpu", "--max-steps", "1"))
        assert r.returncode == 0, r.stderr[-2000:]
        (run / "checkpoint.pt").unlink()
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    r = _run(*trainrun.args(tiny_dataset, run, "--device", "cpu", "--max-steps", "1",
                            "--resume", "auto"))
    assert r.returncode != 0
    line = r.stderr.strip().splitlines()[-1]
    want = "is not empty" if what == "foreign" else "already holds a run"
    assert want in line and str(run) in line and "nothing was changed" in line, line
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


@pytest.mark.parametrize("value", ["yes", "AUTO", "1"])
def test_resume_takes_no_value_but_auto(tiny_dataset, tmp_path, value):
    with pytest.raises(ValueError, match="--resume takes no value, or auto"):
        from_argv(trainrun.args(tiny_dataset, tmp_path / "r", "--resume", value))
