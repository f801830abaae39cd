"""A rank killed under torchrun (CPU, gloo): the job ends (no hang), torchrun
names the dead rank, the surviving rank says what happened and how to go on,
and --resume under torchrun ends with the weights of an uninterrupted run. A
rank sent SIGTERM: every rank stops after the same (logged) step."""

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import trainrun

from benchmarks.soak import parents

EXTRA = ("--method", "simsiam", "--epochs", "1", "--ckpt-every", "2", "--device", "cpu")


def _rank_pids(launcher: int) -> dict[int, int]:
    """RANK -> pid of the trainer processes torchrun ``launcher`` started."""
    out = {}
    for pid, ppid in parents().items():
        if ppid != launcher:
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(x.split(b"=", 1) for x in f.read().split(b"\0") if b"=" in x)
        except OSError:
            continue
        if b"RANK" in env:
            out[int(env[b"RANK"])] = pid
    return out


def _started_and_killed(data, cut, env, tries: int = 3) -> subprocess.Popen:
    """A 2-rank run with rank 1 SIGKILLed mid-run, after its first checkpoint. The
    6-step run can end between a poll and a kill on a loaded machine, so both ranks
    are frozen (SIGSTOP) before it is checked that the job is still mid-run; only
    then rank 1 is killed and rank 0 let go. A run that ended first is run again."""
    for _ in range(tries):
        shutil.rmtree(cut, ignore_errors=True)
        p = subprocess.Popen(trainrun.torchrun(2, *trainrun.args(data, cut, *EXTRA)),
                             cwd=trainrun.ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env)
        metrics = Path(cut, "metrics.jsonl")
        while p.poll() is None and not (metrics.is_file()
                                        and len(metrics.read_text().splitlines()) >= 3):
            time.sleep(0.05)
        ranks = _rank_pids(p.pid)
        for pid in ranks.values():
            _signal(pid, signal.SIGSTOP)
        if p.poll() is None and len(ranks) == 2 and (cut / "checkpoint.pt").is_file() \
                and all(_alive(pid) for pid in ranks.values()):
            os.kill(ranks[1], signal.SIGKILL)
            os.kill(ranks[0], signal.SIGCONT)
            return p
        for pid in ranks.values():
            _signal(pid, signal.SIGCONT)
        p.communicate(timeout=120)
    pytest.fail(f"the run ended before the kill in {tries} tries")


def _signal(pid: int, sig) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _alive(pid: int) -> bool:
    """Not exited (a zombie, exited but not yet reaped, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_killed_rank_ends_the_job_and_resume_matches(small_dataset, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    r = subprocess.run(trainrun.torchrun(2, *trainrun.args(small_dataset, whole, *EXTRA)),
                       cwd=trainrun.ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]

    p = _started_and_killed(small_dataset, cut, env)
    _, err = p.communicate(timeout=120)  # a hang guard, not a timing: the job must end
    assert p.returncode != 0
    assert "rank      : 1" in err and "SIGKILL" in err  # torchrun's root cause names it
    assert "rank 0: another rank stopped" in err and "--resume" in err
    from trainer.checkpoint import backbone_info  # the backbone is the checkpoint's
    at = torch.load(cut / "checkpoint.pt", weights_only=True)["step"]
    assert backbone_info(cut) == {"step": at, "finished": False}

    r = subprocess.run(trainrun.torchrun(2, "--out", cut, "--resume", "--no-progress"),
                       cwd=trainrun.ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = trainrun.weights(whole), trainrun.weights(cut)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_sigterm_on_one_rank_stops_every_rank_at_the_next_logged_step(small_dataset, tmp_path):
    """A signal caught by one rank reaches the others without a per-step read of
    the device: the ranks share it when they read their tally, at the logged steps
    (--log-every; trainer/step.py). Both stop after the same step, a logged one,
    where rank 0 writes the checkpoint and says how to go on."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = tmp_path / "run"
    p = subprocess.Popen(trainrun.torchrun(2, *trainrun.args(
        small_dataset, run, "--method", "simsiam", "--epochs", "4", "--device", "cpu",
        "--log-every", "3")), cwd=trainrun.ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=env)
    metrics = run / "metrics.jsonl"
    while p.poll() is None and not (metrics.is_file() and metrics.read_text().strip()):
        time.sleep(0.05)
    ranks = _rank_pids(p.pid)
    for pid in ranks.values():  # frozen while checked: the signal lands mid-run
        _signal(pid, signal.SIGSTOP)
    lines = [json.loads(ln) for ln in metrics.read_text().splitlines()]
    assert p.poll() is None and len(ranks) == 2, "the run ended before the signal"
    seen = lines[-1]["step"]
    total = 4 * round(seen / lines[-1]["epoch"])  # 4 epochs of step / epoch steps
    assert seen + 3 < total
    os.kill(ranks[1], signal.SIGTERM)
    for pid in ranks.values():
        _signal(pid, signal.SIGCONT)
    _, err = p.communicate(timeout=300)  # a hang guard, not a timing
    assert p.returncode != 0
    at = torch.load(run / "checkpoint.pt", weights_only=True)["step"]
    assert at % 3 == 0 and seen < at < total, (seen, at, total)
    assert f"stopped by SIGTERM after step {at}; checkpoint written" in err, err[-2000:]
    assert json.loads(metrics.read_text().splitlines()[-1])["step"] == at
