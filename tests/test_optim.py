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


def test_the_rate_is_zero_past_the_last_step():
    """Past ``total`` (a run given more steps than its schedule) the cosine stays
    at its end, 0, also when one step follows the warm-up."""
    for total, warm in ((100, 10), (11, 10), (1, 0)):
        for step in (total, total + 1, total + 7):
            assert optim.lr_at(step, total, warm, 0.4) == pytest.approx(0.0, abs=1e-12), \
                (step, total, warm)


def test_set_lr_returns_the_scheduled_rate():
    a, b, c = (torch.nn.Parameter(torch.zeros(1)) for _ in range(3))
    opt = optim.build([{"params": [a], "fixed_lr": True}, {"params": [b], "fixed_lr": False},
                       {"params": [c], "fixed_lr": True}], "sgd", 0.2, 0.9, 0.0)
    assert optim.set_lr(opt, 50, 100, 0) == pytest.approx(0.1)  # not a fixed group's 0.2
    fixed = optim.build([{"params": [a], "fixed_lr": True}], "sgd", 0.2, 0.9, 0.0)
    assert optim.set_lr(fixed, 50, 100, 0) == 0.0


@pytest.mark.parametrize("momentum,decay", [(0.5, 0.01), (0.9, 0.0)])
def test_built_lars_is_lars_with_the_runs_momentum_decay_and_eta_1e3(momentum, decay):
    """build("lars") against the per-parameter loop with the run's momentum and
    decay and eta = 1e-3 (You et al.), two steps."""
    g = torch.Generator().manual_seed(5)
    start = [torch.randn(4, 3, generator=g), torch.randn(3, generator=g)]
    grads = [[torch.randn_like(t) for t in start] for _ in range(2)]
    ps = [torch.nn.Parameter(t.clone()) for t in start]
    opt = optim.build([{"params": ps, "fixed_lr": False}], "lars", 0.3, momentum, decay)
    assert isinstance(opt, optim.LARS)
    ref = [t.clone().requires_grad_(False) for t in start]
    bufs = [None, None]
    for gs in grads:
        for p, gr in zip(ps, gs):
            p.grad = gr.clone()
        opt.step()
        for r, gr in zip(ref, gs):
            r.grad = gr.clone()
        _lars_per_parameter(ref, 0.3, momentum, decay, 1e-3, bufs)
    for p, r in zip(ps, ref):
        torch.testing.assert_close(p.detach(), r, rtol=1e-6, atol=1e-7)


def test_zero_momentum_keeps_the_buffers_a_state_already_has():
    """A resumed optimiser's loaded state has its momentum; zero_momentum (first
    masked step after the load) fills only the missing ones."""
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    opt = optim.build([{"params": [a], "fixed_lr": False}, {"params": [b], "fixed_lr": False}],
                      "sgd", 0.1, 0.9, 0.0)
    a.grad = torch.full((3,), 2.0)
    opt.step()  # a has a buffer, b none (no gradient)
    again = optim.build([{"params": [a], "fixed_lr": False}, {"params": [b], "fixed_lr": False}],
                        "sgd", 0.1, 0.9, 0.0)
    again.load_state_dict(opt.state_dict())
    optim.zero_momentum(again)
    assert torch.equal(again.state[a]["momentum_buffer"], torch.full((3,), 2.0))
    assert torch.equal(again.state[b]["momentum_buffer"], torch.zeros(2))


def test_fixed_lr_groups_keep_their_rate():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = optim.build([{"params": [a], "fixed_lr": False}, {"params": [b], "fixed_lr": True}],
                      "sgd", 0.2, 0.9, 0.0)
    optim.set_lr(opt, 50, 100, 0)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)
    assert opt.param_groups[1]["lr"] == pytest.approx(0.2)


def _lars_per_parameter(params, lr, momentum, weight_decay, eta, bufs):
    """The naive LARS step, one parameter at a time."""
    with torch.no_grad():
        for i, p in enumerate(params):
            d = p.grad
            if p.ndim > 1:
                d = d + weight_decay * p
                w_norm, d_norm = p.norm(), d.norm()
                if w_norm > 0 and d_norm > 0:
                    d = d * (eta * w_norm / d_norm)
            bufs[i] = d.clone() if bufs[i] is None else momentum * bufs[i] + d
            p -= lr * bufs[i]


def test_multi_tensor_lars_equals_the_per_parameter_loop():
    """Matrices, a zero matrix (trust 1), vectors, and a parameter without a gradient."""
    g = torch.Generator().manual_seed(0)
    shapes = [(8, 4), (3, 3, 2, 2), (4,), (6, 5), (1,)]
    ref = [torch.randn(s, generator=g) for s in shapes]
    ref[3].zero_()
    ours = [torch.nn.Parameter(t.clone()) for t in ref]
    idle = torch.nn.Parameter(torch.ones(2, 2))
    opt = optim.LARS([{"params": ours + [idle]}], lr=0.3, momentum=0.9, weight_decay=1e-2,
                     eta=2e-2)
    bufs = [None] * len(ref)
    for _ in range(4):
        grads = [torch.randn(s, generator=g) for s in shapes]
        for p, gr in zip(ours, grads):
            p.grad = gr.clone()
        for t, gr in zip(ref, grads):
            t.grad = gr.clone()
        opt.step()
        _lars_per_parameter(ref, 0.3, 0.9, 1e-2, 2e-2, bufs)
        for a, b in zip(ours, ref):
            torch.testing.assert_close(a.detach(), b, rtol=1e-6, atol=1e-6)
    assert torch.equal(idle.detach(), torch.ones(2, 2)) and idle not in opt.state


def test_built_sgd_equals_plain_momentum_sgd():
    """The fused SGD build against the textbook update (decay into the gradient,
    buffer = grad on the first step, m * buffer + grad after)."""
    g = torch.Generator().manual_seed(1)
    w = torch.nn.Parameter(torch.randn(5, 3, generator=g))
    ref, buf = w.detach().clone(), None
    opt = optim.build([{"params": [w], "fixed_lr": False}], "sgd", 0.1, 0.9, 1e-3)
    for _ in range(3):
        grad = torch.randn(5, 3, generator=g)
        w.grad = grad.clone()
        opt.step()
        d = grad + 1e-3 * ref
        buf = d if buf is None else 0.9 * buf + d
        ref = ref - 0.1 * buf
        torch.testing.assert_close(w.detach(), ref, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("name", ["sgd", "lars"])
def test_a_step_flagged_by_found_inf_changes_nothing(name, device):
    """optim.step with found_inf = 1 leaves every parameter and momentum buffer as
    it was, on the first step too (torch's fused SGD makes its buffers with
    empty_like: zero_momentum must fill them, or the skipped first step leaves
    garbage the next step keeps); with found_inf = 0 it is the plain step. The run
    with skips interleaved equals the run without them, bit for bit."""
    g = torch.Generator().manual_seed(3)
    start = torch.randn(4, 3, generator=g).to(device)
    grads = [torch.randn(4, 3, generator=g).to(device) for _ in range(3)]
    runs = []
    for skips in (False, True):
        w = torch.nn.Parameter(start.clone())
        opt = optim.build([{"params": [w], "fixed_lr": False}], name, 0.1, 0.9, 1e-3)
        for grad in grads:
            if skips:  # a NaN gradient, flagged: nothing may change
                before = w.detach().clone()
                buf0 = opt.state[w].get("momentum_buffer")
                buf0 = torch.zeros_like(w) if buf0 is None else buf0.clone()
                w.grad = torch.full_like(w, float("nan"))
                optim.step(opt, torch.ones((), device=device))
                assert torch.equal(w.detach(), before)
                buf = opt.state[w].get("momentum_buffer")
                assert buf is None or torch.equal(buf, buf0)  # none yet counts as zeros
            w.grad = grad.clone()
            optim.step(opt, torch.zeros((), device=device) if skips else None)
        runs.append((w.detach().clone(), opt.state[w]["momentum_buffer"].clone()))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
