"""What a preemptible, shared cluster does to a run: planted checkpoints, NaN,
--resume in the wrong place, SIGTERM, moved folders, leftovers of a killed
process, and options that would only fail late."""

import json
import os
import shutil
import signal
import subprocess
import time

import pytest
import torch
import trainrun


def _run(*a, timeout=600):
    return subprocess.run(trainrun.cmd(*a), capture_output=True, text=True, cwd=trainrun.ROOT,
                          timeout=timeout)


class _Payload:
    """Unpickling this runs code: it creates a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


@pytest.fixture(scope="module")
def finished(tiny_dataset, tmp_path_factory):
    """A 2-step run, trained once; each test works on its own copy."""
    run = tmp_path_factory.mktemp("finished") / "run"
    r = _run(*trainrun.args(tiny_dataset, run, "--max-steps", "2", "--device", "cpu"))
    assert r.returncode == 0, r.stderr[-2000:]
    return run


def test_planted_checkpoint_is_refused_and_its_code_never_runs(finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    good = torch.load(run / "checkpoint.pt", weights_only=True)  # ours load safely
    marker = tmp_path / "pwned"
    torch.save({**good, "extra": _Payload(str(marker))}, run / "checkpoint.pt")
    r = _run("--out", run, "--resume", "--max-steps", "4")
    assert r.returncode == 1
    assert "refused" in r.stderr and str(run / "checkpoint.pt") in r.stderr
    assert "Traceback" not in r.stderr and not marker.exists()


def test_resume_without_checkpoint_is_an_error_and_changes_nothing(finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "checkpoint.pt").unlink()
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    r = _run("--out", run, "--resume")
    assert r.returncode == 1 and "nothing to resume" in r.stderr, r.stderr[-2000:]
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert after == before


# A run that diverges within its ranges (--lr 1e12 is refused now): VICReg's terms
# weighted 1000 at lr 100 turn the weights non-finite after step 2.
DIVERGES = ["--lr", "100", "--method", "vicreg", "--vicreg-coeffs", "1000,1000,1000",
            "--proj-hidden", "2048", "--proj-dim", "2048"]


def _strict_json_lines(path):
    def refuse(token):
        raise ValueError(f"non-JSON token {token} in {path}")
    return [json.loads(ln, parse_constant=refuse) for ln in path.read_text().splitlines()]


@pytest.mark.parametrize("ckpt_every, says, kept", [
    ("0", "3 steps in a row had a non-finite loss",           # skipped, then stopped
     "no checkpoint had been written yet"),
    ("1", "the model holds non-finite values",                # the save refuses NaN weights
     "the last good checkpoint (step 1) is kept"),
])
def test_non_finite_steps_are_skipped_then_the_run_stops_keeping_good_files(
        tiny_dataset, tmp_path, ckpt_every, says, kept):
    """DIVERGES: the weights turn non-finite after step 2. Checkpointing each epoch,
    the next steps' losses are NaN: skipped, counted, and the run stops after 3 in
    a row, with no checkpoint to keep (and the message says so, not that one is
    kept); checkpointing every step, the save after step 2 refuses the weights and
    the step-1 checkpoint and its backbone stay. Either way: exit 1, no NaN
    checkpoint or backbone, strict-JSON metrics."""
    run = tmp_path / "run"
    r = _run(*trainrun.args(tiny_dataset, run, "--epochs", "5", "--device", "cpu",
                            "--ckpt-every", ckpt_every, "--max-bad-steps", "3"), *DIVERGES)
    assert r.returncode == 1, r.stderr[-2000:]
    assert says in r.stderr and kept in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    lines = _strict_json_lines(run / "metrics.jsonl")  # strict JSON throughout
    if ckpt_every == "0":
        assert lines[-1]["skipped_steps"] == 3 and "non-finite loss, step skipped" in r.stderr
        assert not (run / "checkpoint.pt").exists() and not (run / "backbone.pt").exists()
    else:
        ck = torch.load(run / "checkpoint.pt", weights_only=True)
        assert ck["step"] == 1 and all(torch.isfinite(v).all() for v in ck["model"].values()
                                       if v.is_floating_point())
        from trainer.checkpoint import backbone_info
        assert backbone_info(run) == {"step": 1, "finished": False}
        bb = torch.load(run / "backbone.pt", weights_only=True)
        for k, v in bb.items():  # the checkpoint's own backbone, not a later one
            assert torch.equal(v, ck["model"][f"method.backbone.{k}"]), k


def test_sigterm_checkpoints_the_step_and_a_moved_folder_resumes_exactly(tiny_dataset,
                                                                         tmp_path):
    """SIGTERM mid-run: one line, exit 143, a checkpoint at the step it finished;
    the folder moved elsewhere resumes to the weights of an uninterrupted run
    (bit for bit: CPU semantics)."""
    base = trainrun.args(tiny_dataset, tmp_path / "x", "--method", "byol", "--aux", "augself",
                         "--epochs", "4", "--device", "cpu")
    whole = tmp_path / "whole"
    r = _run(*base, "--out", whole)
    assert r.returncode == 0, r.stderr[-2000:]
    cut = tmp_path / "cut"
    p = subprocess.Popen(trainrun.cmd(*base, "--out", cut), cwd=trainrun.ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while time.time() - t0 < 300:
        if (cut / "metrics.jsonl").exists() and (cut / "metrics.jsonl").read_text().count("\n") >= 3:
            break
        time.sleep(0.01)
    p.send_signal(signal.SIGTERM)
    err = p.communicate(timeout=120)[1]
    assert p.returncode == 128 + signal.SIGTERM, err[-2000:]
    said = [ln for ln in err.splitlines() if "SIGTERM" in ln]
    assert len(said) == 1 and "--resume" in said[0] and "Traceback" not in err
    at = torch.load(cut / "checkpoint.pt", weights_only=True)["step"]
    total = len(trainrun.losses(whole))
    assert 3 <= at < total and f"after step {at}" in said[0]
    (cut / ".checkpoint.pt.tmp-99999").write_bytes(b"left by a killed process")
    moved = tmp_path / "moved"
    shutil.move(cut, moved)
    r = _run("--out", moved, "--resume", "--no-progress")
    assert r.returncode == 0, r.stderr[-2000:]
    assert not (moved / ".checkpoint.pt.tmp-99999").exists()
    a, b = trainrun.weights(whole), trainrun.weights(moved)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert trainrun.losses(moved) == trainrun.losses(whole)


@pytest.mark.parametrize("bad, says", [
    (["--max-steps", "-5"], "max_steps=-5 is out of range"),
    (["--ckpt-every", "-1"], "ckpt_every=-1 is out of range"),
    (["--size", "1"], "size=1 is out of range"),
    (["--lr", "nan"], "lr=nan is out of range"),
    (["--test-data", "/nonexistent/test"], "/nonexistent/test: no manifest.json"),
])
def test_bad_options_fail_before_any_work(tiny_dataset, tmp_path, bad, says):
    run = tmp_path / "run"
    r = _run(*trainrun.args(tiny_dataset, run, "--device", "cpu"), *bad, timeout=120)
    assert r.returncode != 0 and says in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and not run.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message where CUDA is absent")
def test_cuda_device_without_a_gpu_says_what_to_do(tiny_dataset, tmp_path):
    r = _run(*trainrun.args(tiny_dataset, tmp_path / "run"), "--device", "cuda", timeout=120)
    assert r.returncode != 0 and "--device auto or cpu" in r.stderr, r.stderr[-2000:]


def test_checkpoint_helpers_are_atomic_and_name_the_file(tmp_path):
    from trainer import checkpoint

    path = tmp_path / "f.pt"
    checkpoint.save_atomic({"a": torch.ones(2)}, path)
    old = path.read_bytes()

    def boom(f):
        f.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match=str(path)):
        checkpoint.write_atomic(path, boom)
    assert path.read_bytes() == old and not list(tmp_path.glob(".*tmp-*"))
    assert checkpoint.all_finite({"x": [torch.ones(3)], "n": 1})
    assert not checkpoint.all_finite({"x": [torch.tensor([1.0, float("nan")])]})
    (tmp_path / ".f.pt.tmp-4242").write_bytes(b"x")
    assert [p.name for p in checkpoint.remove_stale(tmp_path)] == [".f.pt.tmp-4242"]


@pytest.mark.parametrize("text", ["{not json", '{"resolved": {}}', '{"config": 3}'])
def test_damaged_config_json_is_named_on_resume(tmp_path, capsys, text):
    from trainer import run

    (tmp_path / "config.json").write_text(text)
    assert run.main(["--out", str(tmp_path), "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'config.json'}: not a run's config" in err and "Traceback" not in err


@pytest.fixture
def sigint_handled():
    """SIGINT with Python's own handler for the test, whatever the launcher left (a
    non-interactive shell starts background jobs, CI's included, with SIGINT
    ignored: then Python never installs default_int_handler); restored after."""
    before = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def test_sigint_and_sigterm_are_noted_not_raised(sigint_handled):
    from trainer.run import _stop_on_signals

    term = signal.getsignal(signal.SIGTERM)
    with _stop_on_signals() as caught:
        os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt: the step finishes
        os.kill(os.getpid(), signal.SIGTERM)
    assert caught == [signal.SIGINT, signal.SIGTERM]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    assert signal.getsignal(signal.SIGTERM) is term


def test_a_signal_ignored_at_start_stays_ignored():
    """`trainer.run ... &` from a script starts with SIGINT ignored: a Ctrl-C meant for
    the script's foreground job must not stop the run."""
    from trainer.run import _stop_on_signals

    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with _stop_on_signals() as caught:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
        assert caught == [] and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)
