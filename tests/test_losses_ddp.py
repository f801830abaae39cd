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


def _rank(rank: int, port: int, name: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    td.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        z1, z2 = (z[rank * N // WORLD:(rank + 1) * N // WORLD].clone().requires_grad_()
                  for z in _inputs())
        loss = CASES[name](z1, z2)
        loss.backward()
        torch.save({"loss": loss.detach(), "g1": z1.grad, "g2": z2.grad}, f"{out}.{rank}")
    finally:
        td.destroy_process_group()


@pytest.mark.parametrize("name", sorted(CASES))
def test_two_ranks_equal_one_process(name, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "r")
    mp.spawn(_rank, args=(port, name, out), nprocs=WORLD, join=True)
    z1, z2 = (z.clone().requires_grad_() for z in _inputs())
    loss = CASES[name](z1, z2)
    loss.backward()
    ranks = [torch.load(f"{out}.{r}", weights_only=True) for r in range(WORLD)]
    mean = sum(g["loss"] for g in ranks) / WORLD
    assert torch.allclose(mean, loss.detach().float(), rtol=1e-6)
    for r, got in enumerate(ranks):
        rows = slice(r * N // WORLD, (r + 1) * N // WORLD)
        if name != "nt_xent":
            assert torch.allclose(got["loss"], loss.detach().float(), rtol=1e-6)
        for g, want in ((got["g1"], z1.grad), (got["g2"], z2.grad)):
            assert torch.allclose(g, WORLD * want[rows], rtol=1e-5, atol=1e-7), name
