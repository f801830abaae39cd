"""torchrun --nproc_per_node=2 on CPU (gloo) equals one process with the same
global batch.

Why it can: the epoch order is cut into global batches and rank r takes the
r-th slice of each (pipelines/epochs.py); every augmentation draw is keyed by
(seed, epoch, sample index, view); BatchNorm is synchronised (trainer/sync_bn.py
on CPU); NT-Xent gathers negatives with gradient, MoCo enqueues the gathered
keys, Sinkhorn sums over ranks (trainer/losses.py); DDP averages gradients (E-SSL:
its extra backbone call over the rotated views sits in the same wrapped forward,
its batch statistics synchronised like the method's).

Tolerance, per tensor. Both runs are float64 (--precision fp64: weights, pixels
after the loader, losses; trainer/losses.wide) with one thread each
(OMP_NUM_THREADS=1: torchrun's ranks have one, and the torchvision backend's
float32 rendering changes with the thread count), so the only difference left is
the order of the cross-rank sums (DDP's gradient average, SyncBN's statistics,
the gathers), ~1e-16 relative, which 4 steps of training amplify. Measured
2026-11-30 over these cases (4 steps, float64 throughout): at most 6.8e-5 of a
tensor's largest value (SwAV, a first-block BN bias), 3e-8 absolute on tensors
that are ~0 (biases ahead of a BN, which get no gradient), the logged loss within
1.2e-7 relative. Bound: 1e-3 x the tensor's largest value + 1e-6 (15x and 30x the
measured), the loss at each step within 1e-5 relative (80x). Checked by breaking it: without SyncBN (systems.prepare not
converting) SimSiam's stem weights land 2.6e-2 away against a bound of 2.2e-4, and
MoCo's queue 1.5e-1 against 3.7e-4. Before, the
runs were fp32 with a noise floor from a second and a third run (one thread,
fp64), and the bound was 4x the largest drift of any tensor (up to ~8e-2 on every
weight); under xdist the one-thread reference could be the run under test itself.

CPU semantics, explicitly: every run says --device cpu (gloo), so that on a GPU
machine the ranks do not ask for cuda:0 and cuda:1 (NCCL needs a GPU per rank).
"""

import os
import subprocess

import pytest
import torch
import trainrun

RTOL, ATOL, LOSS_RTOL = 1e-3, 1e-6, 1e-5


@pytest.mark.parametrize("method,aux,backend", [
    ("simsiam", "augself", "torchvision"), ("simclr", "equimod", "torchvision"),
    ("moco", "none", "torchvision"), ("swav", "none", "torchvision"),
    ("byol", "essl", "torchvision"),
    pytest.param("simsiam", "augself", "dali-cpu", marks=pytest.mark.dali)])
def test_two_ranks_equal_one_process(tiny_dataset, tmp_path, method, aux, backend):
    base = trainrun.args(tiny_dataset, tmp_path / "x", "--method", method, "--aux", aux,
                         "--epochs", "2", "--max-steps", "4", "--device", "cpu",
                         "--precision", "fp64")
    base[base.index("--backend") + 1] = backend
    one, two = tmp_path / "one", tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for cmd in (trainrun.cmd(*base, "--out", one), trainrun.torchrun(2, *base, "--out", two)):
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=trainrun.ROOT, timeout=300,
                           env=env)
        assert r.returncode == 0, r.stderr[-3000:]
    a, b = trainrun.weights(one), trainrun.weights(two)
    assert a.keys() == b.keys()
    off = []
    for k in a:
        if not a[k].is_floating_point():
            assert torch.equal(a[k], b[k]), k
            continue
        assert a[k].dtype == torch.float64, k
        d, bound = (a[k] - b[k]).abs().max().item(), RTOL * a[k].abs().max().item() + ATOL
        if d > bound:
            off.append(f"{k}: {d:.2e} > {bound:.2e}")
    assert not off, off[:5]
    # the global-mean losses the runs logged, every step; and training moved
    la, lb = trainrun.losses(one), trainrun.losses(two)
    assert len(la) == len(lb) == 4
    for x, y in zip(la, lb):
        assert abs(y - x) <= LOSS_RTOL * abs(x), (la, lb)
    assert abs(la[-1] - la[0]) > 1e-3
