"""A rank killed under torchrun (CPU, gloo): the job ends within 60 s, torchrun
names the dead rank, the surviving rank says what happened and how to go on,
and --resume under torchrun ends with the weights of an uninterrupted run."""

import os
import signal
import subprocess
import time
from pathlib import Path

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


def test_killed_rank_ends_the_job_and_resume_matches(small_dataset, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    r = subprocess.run(trainrun.torchrun(2, *trainrun.args(small_dataset, whole, *EXTRA)),
                       cwd=trainrun.ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]

    p = subprocess.Popen(trainrun.torchrun(2, *trainrun.args(small_dataset, cut, *EXTRA)),
                         cwd=trainrun.ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=env)
    metrics = Path(cut, "metrics.jsonl")
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3):
        assert p.poll() is None, p.stderr.read()[-2000:]
        time.sleep(0.1)
    os.kill(_rank_pids(p.pid)[1], signal.SIGKILL)
    killed = time.monotonic()
    _, err = p.communicate(timeout=120)
    assert time.monotonic() - killed < 60
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
