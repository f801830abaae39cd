"""torchrun --nproc_per_node=2 on CPU (gloo) equals one process with the same
global batch.

Why it can: the epoch order is cut into global batches and rank r takes the
r-th slice of each (pipelines/epochs.py); every augmentation draw is keyed by
(seed, epoch, sample index, view); BatchNorm is synchronised (trainer/sync_bn.py
on CPU); NT-Xent gathers negatives with gradient, MoCo enqueues the gathered
keys, Sinkhorn sums over ranks (trainer/losses.py); DDP averages gradients.

Tolerance: "float tolerance" is measured, not guessed. Float32 sums taken in
another order (two ranks of one thread against one process of two threads)
differ by ~1e-7 after one step, and the training dynamics amplify that: at
initialisation the features of a zero-init-residual ResNet are nearly equal,
so normalised embeddings (SimCLR, EquiMod) magnify tiny differences. One
process run with OMP_NUM_THREADS=1 instead of 2 differs from itself by up to
2e-2 after 4 SimCLR+EquiMod steps at these settings (measured; SimSiam, MoCo
and SwAV stay near 1e-6). So each case also runs that single
process with one thread, and the 2-rank run must be within 4x that noise floor
(and never off by more than 1e-5 where the floor is ~0). The DALI backends are
not covered: DALI's reader shards contiguously and its crop sampler draws from
the pipeline's own generator, so their samples differ with the world size.
"""

import os
import subprocess

import pytest
import torch
import trainrun


@pytest.mark.parametrize("method,aux", [("simsiam", "augself"), ("simclr", "equimod"),
                                        ("moco", "none"), ("swav", "none")])
def test_two_ranks_equal_one_process(tiny_dataset, tmp_path, method, aux):
    base = trainrun.args(tiny_dataset, tmp_path / "x", "--method", method, "--aux", aux,
                         "--epochs", "2", "--max-steps", "4")
    one, two = tmp_path / "one", tmp_path / "two"
    one, one_t1, two = tmp_path / "one", tmp_path / "one_t1", tmp_path / "two"
    for cmd, env in [(trainrun.cmd(*base, "--out", one), {}),
                     (trainrun.cmd(*base, "--out", one_t1), {"OMP_NUM_THREADS": "1"}),
                     (trainrun.torchrun(2, *base, "--out", two), {})]:
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=trainrun.ROOT, timeout=300,
                           env={**os.environ, **env})
        assert r.returncode == 0, r.stderr[-3000:]
    a, a1, b = trainrun.weights(one), trainrun.weights(one_t1), trainrun.weights(two)
    assert a.keys() == b.keys()
    floats = [k for k in a if a[k].is_floating_point()]
    noise = max((a[k] - a1[k]).abs().max().item() for k in floats)
    worst, where = max(((a[k] - b[k]).abs().max().item(), k) for k in floats)
    assert worst <= max(4 * noise, 1e-5), f"{where}: {worst:.2e} vs noise floor {noise:.2e}"
    for k in a:
        if not a[k].is_floating_point():
            assert torch.equal(a[k], b[k]), k
    # the global-mean losses the runs logged: step 1 before any amplification, then
    # every step within the same noise-based bound; and training moved
    la, la1, lb = trainrun.losses(one), trainrun.losses(one_t1), trainrun.losses(two)
    assert lb[0] == pytest.approx(la[0], rel=1e-5)
    for x, x1, y in zip(la, la1, lb):
        assert abs(y - x) <= max(4 * abs(x1 - x), 1e-5 * abs(x))
    assert abs(la[-1] - la[0]) > 1e-3
