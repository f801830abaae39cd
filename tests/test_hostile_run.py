"""A careless or hostile user against the trainer's run folder: a finished run whose
checkpoint was deleted, a folder holding other files, a user's own config.json,
two trainers on one folder, a dataset replaced in place or moved, a manifest whose
class list was edited, a torn metrics.jsonl, an --out that needs shell quoting.
Each case: one line, nothing that was written is lost or changed."""

import json
import os
import shlex
import shutil
import signal
import time

import pytest
import torch
import trainrun

from trainer import run as trainer_run


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tiny_dataset, tmp_path_factory):
    """A run trained 2 steps of 2 epochs; each test works on its own copy."""
    run = tmp_path_factory.mktemp("finished") / "run"
    assert trainer_run.main(trainrun.args(tiny_dataset, run, "--epochs", "2",
                                          "--max-steps", "2")) == 0
    return run


def _copy(finished, tmp_path, name="run"):
    run = tmp_path / name
    shutil.copytree(finished, run)
    return run


def test_a_finished_run_without_its_checkpoint_is_not_overwritten(finished, tiny_dataset,
                                                                  tmp_path, capsys):
    """People delete checkpoint.pt to save space; the same command again must not
    replace backbone.pt, config.json and metrics.jsonl."""
    run = _copy(finished, tmp_path)
    (run / "checkpoint.pt").unlink()
    before = _files(run)
    rc = trainer_run.main(trainrun.args(tiny_dataset, run, "--epochs", "2", "--max-steps", "2"))
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1, err
    assert "already holds a run" in err and "--overwrite" in err and "--resume" not in err
    assert _files(run) == before


def test_overwrite_replaces_the_run_and_keeps_the_users_files(finished, tiny_dataset, tmp_path,
                                                              capsys):
    run = _copy(finished, tmp_path)
    (run / "notes.txt").write_text("my notes")
    (run / "eval").mkdir()
    (run / "eval" / "old.json").write_text("{}")
    rc = trainer_run.main(trainrun.args(tiny_dataset, run, "--epochs", "2", "--max-steps", "1",
                                        "--seed", "3"))
    assert rc == 1 and "--overwrite" in capsys.readouterr().err
    rc = trainer_run.main(trainrun.args(tiny_dataset, run, "--epochs", "2", "--max-steps", "1",
                                        "--seed", "3", "--overwrite"))
    assert rc == 0, capsys.readouterr().err
    assert (run / "notes.txt").read_text() == "my notes"
    assert not (run / "eval").exists()  # the earlier run's outputs went first
    cfg = json.loads((run / "config.json").read_text())["config"]
    assert cfg["seed"] == 3 and cfg["overwrite"] is False  # a resume never inherits it
    from trainer.checkpoint import backbone_info
    assert len(trainrun.losses(run)) == 1 and backbone_info(run)["step"] == 1


def test_a_folder_of_other_files_needs_overwrite_and_a_users_config_is_never_replaced(
        tiny_dataset, tmp_path, capsys):
    run = tmp_path / "mine"
    run.mkdir()
    (run / "config.json").write_text('{"method": "byol"}')  # the user's own config file
    before = _files(run)
    rc = trainer_run.main(trainrun.args(tiny_dataset, run, "--max-steps", "1"))
    err = capsys.readouterr().err
    assert rc == 1 and "not empty" in err and "--overwrite" in err
    rc = trainer_run.main(trainrun.args(tiny_dataset, run, "--max-steps", "1", "--overwrite"))
    err = capsys.readouterr().err
    assert rc == 1 and "was not written by trainer.run" in err, err
    assert _files(run) == before


def test_a_second_trainer_on_a_held_folder_is_refused_naming_the_holder(finished, tiny_dataset,
                                                                        tmp_path, capsys):
    from pipelines.folder_lock import FolderLock

    run = _copy(finished, tmp_path)
    before = _files(run)
    with FolderLock(run, "trainer.run"):
        for extra in (["--resume", "--max-steps", "3"], ["--overwrite"]):
            rc = trainer_run.main(["--out", str(run), *extra] if extra[0] == "--resume" else
                                  trainrun.args(tiny_dataset, run, "--max-steps", "1", *extra))
            err = capsys.readouterr().err.strip()
            assert rc == 1 and f"in use by trainer.run (PID {os.getpid()})" in err, err
        fresh = tmp_path / "fresh"
        fresh.mkdir()
        with FolderLock(fresh, "trainer.run"):
            rc = trainer_run.main(trainrun.args(tiny_dataset, fresh, "--max-steps", "1"))
            assert rc == 1 and f"PID {os.getpid()}" in capsys.readouterr().err
    assert _files(run) == before  # lock file gone with its holder, nothing else touched


def test_resume_follows_the_dataset_by_content_not_path(finished, tiny_dataset, tmp_path,
                                                        capsys):
    """An identical dataset moved elsewhere resumes; one replaced in place (same path,
    other samples) is refused, saying what changed, and nothing is written."""
    moved = tmp_path / "moved-data"
    shutil.copytree(tiny_dataset, moved)
    run = _copy(finished, tmp_path)
    rc = trainer_run.main(["--out", str(run), "--resume", "--max-steps", "3", "--data",
                           str(moved), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    assert json.loads((run / "config.json").read_text())["config"]["data"] == str(moved)

    from tools import convert_dataset, make_synthetic
    make_synthetic.generate(tmp_path / "other", (40, 40), 96, 0, seed=11, quiet=True)
    shutil.rmtree(moved)
    assert convert_dataset.main([str(tmp_path / "other"), "--split", "train", "--out",
                                 str(moved), "--quiet", "--no-beton"]) == 0
    capsys.readouterr()  # the converter's notes on empty class folders
    before = _files(run)
    rc = trainer_run.main(["--out", str(run), "--resume", "--max-steps", "4", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and "not the one this run started on" in err and "samples 256 -> 96" in err
    assert len(err.splitlines()) == 1 and _files(run) == before


def test_labels_past_an_edited_class_list_are_refused_before_the_run_starts(
        tiny_dataset, tmp_path, capsys):
    data = tmp_path / "edited"
    shutil.copytree(tiny_dataset, data)
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["classes"] = manifest["classes"][:10]  # a user "tidied" the class list
    (data / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "run"
    rc = trainer_run.main(trainrun.args(data, out, "--method", "supervised", "--max-steps", "2"))
    err = capsys.readouterr().err.strip()
    assert rc == 1 and "lists 10 classes but sample labels reach" in err, err
    assert str(data / "manifest.json") in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_a_torn_last_metrics_line_is_dropped_and_a_damaged_one_named(finished, tmp_path,
                                                                     capsys):
    run = _copy(finished, tmp_path)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "epoch": 0.37, "lo')  # what a kill mid-write leaves
    rc = trainer_run.main(["--out", str(run), "--resume", "--max-steps", "3", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 0 and "dropped its torn last line" in err, err
    assert [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text()
                                   .splitlines())] == [1, 2, 3]

    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines[1] = "garbage"
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    rc = trainer_run.main(["--out", str(run), "--resume", "--max-steps", "4", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and f"{run / 'metrics.jsonl'}, line 2" in err and "Traceback" not in err


def _term_at(monkeypatch, step):
    """SIGTERM this process as the trainer logs ``step`` (its handler turns it into a
    checkpoint and a stop at the next logged step). From inside the log write, not a
    thread polling metrics.jsonl: the test failed that way on an H200 (its traceback
    was lost with the time-limited run), where this run's 14 small steps can end
    before a polling thread's turn comes; here the signal follows the write."""
    from trainer import runlog

    write = runlog.Metrics.write

    def write_then_term(self, record):
        write(self, record)
        if record.get("step") == step:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(runlog.Metrics, "write", write_then_term)


def test_after_sigterm_the_backbone_is_the_checkpoints_and_the_resume_line_is_quoted(
        finished, tmp_path, capsys, monkeypatch):
    """A finished 2-step run resumed towards 40 steps and stopped by SIGTERM: backbone.pt
    must be the new checkpoint's weights (it was the step-2 backbone next to a later
    checkpoint), and the printed resume command must survive a shell (a space and a $
    in the folder name)."""
    run = _copy(finished, tmp_path, "my run $HOME")
    _term_at(monkeypatch, 4)
    rc = trainer_run.main(["--out", str(run), "--resume", "--max-steps", "40", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 128 + signal.SIGTERM, err
    said = [ln for ln in err.splitlines() if "SIGTERM" in ln][0]
    command = said.split("continue with: ", 1)[1]
    assert shlex.split(command)[-3:] == ["--out", str(run), "--resume"]
    from trainer.checkpoint import backbone_info
    ck = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ck["step"] >= 4 and backbone_info(run) == {"step": ck["step"], "finished": False}
    bb = torch.load(run / "backbone.pt", weights_only=True)
    for k, v in bb.items():
        assert torch.equal(v, ck["model"][f"method.backbone.{k}"]), k


def test_a_running_trainer_holds_its_folder_against_a_second_one_and_evaluate(
        finished, tiny_dataset, tmp_path, capsys):
    """Two trainers on one --out both ran to exit 0 (a mixed config, interleaved
    metrics, whichever weights finished last). While one trains, a second trainer
    (fresh or --resume) and tools.evaluate writing into its eval/ are refused at
    start, naming its PID; once it is gone the folder is free again."""
    import subprocess

    from tools import evaluate

    run = _copy(finished, tmp_path)
    first = subprocess.Popen(trainrun.cmd("--out", run, "--resume", "--max-steps", "16"),
                             cwd=trainrun.ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (run / ".augaware.lock").exists() or \
                str(first.pid) not in (run / ".augaware.lock").read_text():
            assert first.poll() is None and time.time() < deadline
            time.sleep(0.05)
        rc = trainer_run.main(["--out", str(run), "--resume", "--max-steps", "16"])
        err = capsys.readouterr().err.strip()
        assert rc == 1 and f"in use by trainer.run (PID {first.pid})" in err, err
        from pipelines import cli
        rc = cli.run(evaluate.main, "evaluate", [str(run), "--train", str(tiny_dataset),
                                                 "--test", str(tiny_dataset), "--task", "knn"])
        err = capsys.readouterr().err.strip()
        assert rc == 1 and f"in use by trainer.run (PID {first.pid})" in err, err
        assert not (run / "eval").exists()
    finally:
        first.kill()
        first.wait()
    # SIGKILL leaves the lock file, but the OS dropped the lock: the folder is free
    rc = trainer_run.main(["--out", str(run), "--resume", "--max-steps", "3", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
