"""LARS and the learning-rate schedule against hand computations."""

import math

import pytest
import torch

from trainer import optim


def test_lars_step_by_hand():
    w = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))      # |w| = 5
    b = torch.nn.Parameter(torch.tensor([1.0]))
    opt = optim.LARS([{"params": [w, b]}], lr=0.1, momentum=0.9, weight_decay=0.01, eta=0.001)
    w.grad = torch.tensor([[0.0, 1.0]])
    b.grad = torch.tensor([2.0])
    opt.step()
    d = torch.tensor([[0.03, 1.04]])                          # g + wd * w
    trust = 0.001 * 5.0 / math.hypot(0.03, 1.04)
    torch.testing.assert_close(w.detach(), torch.tensor([[3.0, 4.0]]) - 0.1 * trust * d)
    # 1-D parameters: no weight decay, no adaptation
    torch.testing.assert_close(b.detach(), torch.tensor([1.0 - 0.1 * 2.0]))
    # second step: the momentum buffer carries the first update
    w.grad = torch.tensor([[0.0, 1.0]])
    b.grad = torch.tensor([2.0])
    opt.step()
    torch.testing.assert_close(b.detach(), torch.tensor([0.8 - 0.1 * (0.9 * 2.0 + 2.0)]))


def test_schedule_warmup_then_cosine():
    base, total, warm = 0.4, 100, 10
    assert optim.lr_at(0, total, warm, base) == pytest.approx(base / warm)
    assert optim.lr_at(9, total, warm, base) == pytest.approx(base)
    assert optim.lr_at(10, total, warm, base) == pytest.approx(base)
    assert optim.lr_at(55, total, warm, base) == pytest.approx(base / 2)   # half-way: cos = 0
    assert optim.lr_at(100, total, warm, base) == pytest.approx(0.0, abs=1e-12)


def test_fixed_lr_groups_keep_their_rate():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = optim.build([{"params": [a], "fixed_lr": False}, {"params": [b], "fixed_lr": True}],
                      "sgd", 0.2, 0.9, 0.0)
    optim.set_lr(opt, 50, 100, 0)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)
    assert opt.param_groups[1]["lr"] == pytest.approx(0.2)
