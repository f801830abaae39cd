"""The global-batch losses (Barlow Twins, VICReg, NT-Xent) over 2 gloo ranks
equal one process on the whole batch: the mean of the ranks' losses is the
single process's loss (Barlow Twins and VICReg: every rank's is; NT-Xent
averages over each rank's own anchors), and each rank's input gradient is W
times the single process's for its rows (each rank differentiates the sum of
the W ranks' losses; DDP then averages the parameter gradients over ranks,
which gives back the single process's)."""

import os
import socket

import pytest
import torch
import torch.distributed as td
import torch.multiprocessing as mp

from trainer import losses

CASES = {"barlow": lambda a, b: losses.barlow_twins(a, b, 0.0051),
         "vicreg": lambda a, b: losses.vicreg(a, b, 25, 25, 1),
         "nt_xent": lambda a, b: losses.nt_xent(a, b, 0.2)}
WORLD, N, D = 2, 8, 6


def _inputs():
    g = torch.Generator().manual_seed(7)
    return [torch.randn(N, D, generator=g, dtype=torch.float64) for _ in range(2)]


def _rank(rank: int, port: int, work, name: str, out: str) -> None:
    """One gloo rank: ``work(rank, name)``'s dict saved to ``out.rank``."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    td.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        torch.save(work(rank, name), f"{out}.{rank}")
    finally:
        td.destroy_process_group()


def _two_ranks(work, name: str, tmp_path) -> list[dict]:
    """``work`` (a module-level function, so that spawn can send it) on WORLD ranks."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "r")
    mp.spawn(_rank, args=(port, work, name, out), nprocs=WORLD, join=True)
    return [torch.load(f"{out}.{r}", weights_only=True) for r in range(WORLD)]


def _loss_on_rows(rank: int, name: str) -> dict:
    z1, z2 = (z[rank * N // WORLD:(rank + 1) * N // WORLD].clone().requires_grad_()
              for z in _inputs())
    loss = CASES[name](z1, z2)
    loss.backward()
    return {"loss": loss.detach(), "g1": z1.grad, "g2": z2.grad}


@pytest.mark.parametrize("name", sorted(CASES))
def test_two_ranks_equal_one_process(name, tmp_path):
    ranks = _two_ranks(_loss_on_rows, name, tmp_path)
    z1, z2 = (z.clone().requires_grad_() for z in _inputs())
    loss = CASES[name](z1, z2)
    loss.backward()
    # float64 throughout (losses.wide keeps it): only the summation order differs
    assert loss.dtype == torch.float64 and all(g["loss"].dtype == torch.float64 for g in ranks)
    mean = sum(g["loss"] for g in ranks) / WORLD
    torch.testing.assert_close(mean, loss.detach(), rtol=1e-12, atol=0)
    for r, got in enumerate(ranks):
        rows = slice(r * N // WORLD, (r + 1) * N // WORLD)
        if name != "nt_xent":
            torch.testing.assert_close(got["loss"], loss.detach(), rtol=1e-12, atol=0)
        for g, want in ((got["g1"], z1.grad), (got["g2"], z2.grad)):
            torch.testing.assert_close(g, WORLD * want[rows], rtol=1e-10, atol=1e-14)


# MoCo and SwAV couple the ranks through state and codes rather than through the
# loss's own arithmetic: MoCo enqueues the keys of the *global* batch (gathered in
# rank order), SwAV's Sinkhorn normalises its codes over the global batch. Checked
# on the methods themselves (tests/stepkit.py's small networks, float64, BN in eval
# mode so that a sample's features do not depend on which rank holds it): the
# ranks' mean loss is the single process's, the mean of their parameter gradients
# (what DDP applies) is its gradient, and MoCo's queue after the step is its queue.
B = 8


def _method(name: str):
    import stepkit

    objective, _, _, recipe = stepkit.build(name, "none")
    objective = objective.double().eval()
    batch = stepkit.batch(recipe, 3, b=B)
    batch.views = [x.double() for x in batch.views]
    return objective, batch


def _rows(batch, lo: int, hi: int):
    from pipelines.batch import Batch

    return Batch([x[lo:hi] for x in batch.views], {k: t[lo:hi] for k, t in batch.params.items()},
                 batch.labels[lo:hi], batch.index[lo:hi])


def _step(objective, batch) -> dict:
    out = objective(batch)
    out["loss"].backward()
    objective.after_step(0.5)
    grads = {n: p.grad.clone() for n, p in objective.named_parameters() if p.grad is not None}
    state = {k: v.clone() for k, v in objective.state_dict().items() if "queue" in k}
    return {"loss": out["loss"].detach(), "grads": grads, "state": state}


def _method_on_rows(rank: int, name: str) -> dict:
    objective, batch = _method(name)
    return _step(objective, _rows(batch, rank * B // WORLD, (rank + 1) * B // WORLD))


@pytest.mark.parametrize("name", ["moco", "swav"])
def test_moco_queue_and_swav_codes_over_two_ranks_equal_one_process(name, tmp_path):
    ranks = _two_ranks(_method_on_rows, name, tmp_path)
    objective, batch = _method(name)
    want = _step(objective, batch)
    # float64: what differs is summation order, ~1e-16 relative
    mean = sum(r["loss"] for r in ranks) / WORLD
    torch.testing.assert_close(mean, want["loss"], rtol=1e-12, atol=0)
    assert ranks[0]["grads"].keys() == want["grads"].keys() and want["grads"]
    for k, g in want["grads"].items():
        got = sum(r["grads"][k] for r in ranks) / WORLD
        torch.testing.assert_close(got, g, rtol=1e-9, atol=1e-12 * g.abs().max().item(),
                                   msg=lambda m, k=k: f"{name} {k}: {m}")
    if name == "moco":  # every rank holds the global batch's keys, in rank order
        assert want["state"]["method.queue_ptr"].item() == B
        for r in ranks:
            assert torch.equal(r["state"]["method.queue_ptr"], want["state"]["method.queue_ptr"])
            torch.testing.assert_close(r["state"]["method.queue"], want["state"]["method.queue"],
                                       rtol=1e-12, atol=1e-14)


def _moco_step_on_rows(rank: int, name: str) -> dict:
    """One checked step of MoCo on this rank's rows; rank 1's rows hold a NaN when
    ``name`` is "poisoned" (its loss is not finite, so every rank must skip)."""
    from trainer.step import train_step

    objective, batch = _method("moco")
    rows = _rows(batch, rank * B // WORLD, (rank + 1) * B // WORLD)
    if name == "poisoned" and rank == 1:
        for x in rows.views:
            x[0, 0, 0, 0] = float("nan")
    opt, sysm = _sgd(objective), _cpu_systems()
    before = {k: v.clone() for k, v in objective.state_dict().items() if "queue" in k}
    out = train_step(objective, objective, opt, sysm, rows, 0, 0.5, check_finite=True)
    after = {k: v.clone() for k, v in objective.state_dict().items() if "queue" in k}
    return {"skipped": out["skipped"], "before": before, "after": after}


def _sgd(objective):
    from trainer import optim

    return optim.build(objective.param_groups(), "sgd", 0.1, 0.9, 0.0)  # the runs' SGD


def _cpu_systems():
    import stepkit

    return stepkit.build("moco", "none")[2]


@pytest.mark.parametrize("name", ["poisoned", "clean"])
def test_a_skipped_moco_step_leaves_the_queue_on_every_rank(name, tmp_path):
    """MoCo enqueues in after_step, given ``ok`` (trainer/step.py): a step skipped
    for a non-finite loss on one rank leaves the queue and its pointer bit for bit
    on both ranks (the skip is all-reduced), and in one process; a clean step moves
    them (so the check can fail)."""
    ranks = _two_ranks(_moco_step_on_rows, name, tmp_path)
    for r in ranks:
        assert r["skipped"].item() == float(name == "poisoned")
        same = all(torch.equal(r["before"][k], r["after"][k]) for k in r["before"])
        assert same == (name == "poisoned"), r["after"]["method.queue_ptr"]
    # one process: the whole batch, a NaN in it
    from trainer.step import train_step

    objective, batch = _method("moco")
    if name == "poisoned":
        batch.views[0][0, 0, 0, 0] = float("nan")
    before = {k: v.clone() for k, v in objective.state_dict().items() if "queue" in k}
    out = train_step(objective, objective, _sgd(objective), _cpu_systems(), batch, 0, 0.5,
                     check_finite=True)
    assert out["skipped"].item() == float(name == "poisoned")
    same = all(torch.equal(before[k], v) for k, v in objective.state_dict().items()
               if "queue" in k)
    assert same == (name == "poisoned")
