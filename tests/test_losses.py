"""Each loss against a naive loop on fixed inputs."""

import math

import numpy as np
import pytest
import torch

from trainer import losses


def cos(a, b):
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture
def z():
    g = torch.Generator().manual_seed(3)
    return [torch.randn(6, 5, generator=g, dtype=torch.float64) for _ in range(4)]


def test_negative_cosine_and_byol(z):
    p, t = z[0].numpy(), z[1].numpy()
    naive = -sum(cos(p[i], t[i]) for i in range(6)) / 6
    assert losses.negative_cosine(z[0], z[1]).item() == pytest.approx(naive, rel=1e-9)
    naive_byol = sum(2 - 2 * cos(p[i], t[i]) for i in range(6)) / 6
    assert losses.byol_regression(z[0], z[1]).item() == pytest.approx(naive_byol, rel=1e-9)


def test_negative_cosine_stops_gradient_into_target(z):
    p, t = z[0].clone().requires_grad_(), z[1].clone().requires_grad_()
    losses.negative_cosine(p, t).backward()
    assert t.grad is None and p.grad.abs().sum() > 0


@pytest.mark.parametrize("temperature", [0.2, 0.5])
def test_nt_xent(z, temperature):
    a = torch.cat([z[0], z[1]]).numpy()
    n = len(z[0])
    total = 0.0
    for i in range(2 * n):
        pos = (i + n) % (2 * n)
        den = sum(math.exp(cos(a[i], a[k]) / temperature) for k in range(2 * n) if k != i)
        total += -math.log(math.exp(cos(a[i], a[pos]) / temperature) / den)
    got = losses.nt_xent(z[0], z[1], temperature).item()
    assert got == pytest.approx(total / (2 * n), rel=1e-6)


def test_moco_infonce(z):
    q = torch.nn.functional.normalize(z[0], dim=1)
    k = torch.nn.functional.normalize(z[1], dim=1)
    queue = torch.nn.functional.normalize(torch.cat([z[2], z[3]]), dim=1)
    t = 0.2
    qn, kn, Q = q.numpy(), k.numpy(), queue.numpy()
    total = 0.0
    for i in range(len(qn)):
        pos = math.exp(np.dot(qn[i], kn[i]) / t)
        neg = sum(math.exp(np.dot(qn[i], Q[j]) / t) for j in range(len(Q)))
        total += -math.log(pos / (pos + neg))
    assert losses.moco_infonce(q, k, queue, t).item() == pytest.approx(total / len(qn), rel=1e-9)


def naive_sinkhorn(scores, eps, iters):
    """SwAV's published algorithm, loop by loop."""
    Q = np.exp(scores / eps).T          # K x B
    K, B = Q.shape
    Q = Q / Q.sum()
    for _ in range(iters):
        for k in range(K):
            Q[k] = Q[k] / Q[k].sum() / K
        for b in range(B):
            Q[:, b] = Q[:, b] / Q[:, b].sum() / B
    for b in range(B):
        Q[:, b] = Q[:, b] / Q[:, b].sum()
    return Q.T


def test_sinkhorn():
    g = torch.Generator().manual_seed(0)
    s = torch.nn.functional.normalize(torch.randn(12, 4, generator=g, dtype=torch.float64), dim=1)
    protos = torch.nn.functional.normalize(torch.randn(7, 4, generator=g, dtype=torch.float64),
                                           dim=1)
    scores = s @ protos.t()
    got = losses.sinkhorn(scores, 0.05, 3).double().numpy()
    want = naive_sinkhorn(scores.numpy(), 0.05, 3)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got.sum(1), 1, rtol=1e-5)


def test_swapped_prediction(z):
    g = torch.Generator().manual_seed(1)
    scores = [torch.randn(6, 7, generator=g, dtype=torch.float64) for _ in range(4)]
    codes = [torch.softmax(torch.randn(6, 7, generator=g, dtype=torch.float64), 1)
             for _ in range(2)]
    t = 0.1
    total = 0.0
    for i in range(2):
        terms = []
        for v in range(4):
            if v == i:
                continue
            s = scores[v].numpy() / t
            logp = s - np.log(np.exp(s).sum(1, keepdims=True))
            terms.append(-(codes[i].numpy() * logp).sum(1).mean())
        total += sum(terms) / len(terms)
    assert losses.swapped_prediction(codes, scores, t).item() == pytest.approx(total, rel=1e-6)


def naive_standardise(z):
    n, d = z.shape
    out = np.zeros_like(z)
    for j in range(d):
        col = z[:, j]
        mean = sum(col) / n
        var = sum((x - mean) ** 2 for x in col) / n
        out[:, j] = (col - mean) / math.sqrt(var + 1e-5)
    return out


@pytest.mark.parametrize("lambd", [0.0051, 0.5])
def test_barlow_twins(z, lambd):
    a, b = naive_standardise(z[0].numpy()), naive_standardise(z[1].numpy())
    n, d = a.shape
    total = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(a[k, i] * b[k, j] for k in range(n)) / n
            total += (1 - c) ** 2 if i == j else lambd * c ** 2
    assert losses.barlow_twins(z[0], z[1], lambd).item() == pytest.approx(total, rel=1e-5)


def test_vicreg(z):
    a, b = z[0].numpy(), z[1].numpy()
    n, d = a.shape
    sim = sum((a[k, j] - b[k, j]) ** 2 for k in range(n) for j in range(d)) / (n * d)

    def var(x):
        out = 0.0
        for j in range(d):
            mean = sum(x[:, j]) / n
            v = sum((x[k, j] - mean) ** 2 for k in range(n)) / (n - 1)
            out += max(0.0, 1 - math.sqrt(v + 1e-4))
        return out / d

    def cov(x):
        mean = x.mean(0)
        out = 0.0
        for i in range(d):
            for j in range(d):
                if i != j:
                    c = sum((x[k, i] - mean[i]) * (x[k, j] - mean[j]) for k in range(n)) / (n - 1)
                    out += c ** 2
        return out / d

    want = 25 * sim + 25 * (var(a) + var(b)) + 1 * (cov(a) + cov(b))
    assert losses.vicreg(z[0], z[1], 25, 25, 1).item() == pytest.approx(want, rel=1e-6)
    # the variance hinge pushes small columns apart: its gradient is not zero there
    small = (z[0] * 0.1).requires_grad_()
    losses.vicreg(small, z[1] * 0.1, 0, 1, 0).backward()
    assert small.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_losses_are_at_least_float32_and_keep_float64(dtype):
    """bf16 activations give float32 losses (summed in float32); an fp64 run's stay
    float64 (--precision fp64 is the reference the DDP tests compare in; a .float()
    in SimCLR's, SwAV's, Barlow's and VICReg's losses made them float32 there)."""
    g = torch.Generator().manual_seed(2)
    z1, z2 = (torch.randn(8, 6, generator=g).to(dtype) for _ in range(2))
    queue = torch.nn.functional.normalize(torch.randn(5, 6, generator=g), dim=1).to(dtype)
    scores = [torch.randn(8, 4, generator=g).to(dtype) for _ in range(2)]
    codes = [losses.sinkhorn(s, 0.05, 3) for s in scores]
    want = torch.float64 if dtype == torch.float64 else torch.float32
    outs = {"nt_xent": losses.nt_xent(z1, z2, 0.2), "barlow": losses.barlow_twins(z1, z2, 5e-3),
            "vicreg": losses.vicreg(z1, z2, 25, 25, 1), "sinkhorn": codes[0],
            "swav": losses.swapped_prediction(codes, scores, 0.1)}
    if dtype == torch.float64:  # these follow their inputs' dtype
        outs["moco"] = losses.moco_infonce(z1, z2, queue, 0.2)
        outs["cosine"] = losses.negative_cosine(z1, z2)
    assert {k: v.dtype for k, v in outs.items()} == {k: want for k in outs}


def test_losses_make_their_tensors_on_their_inputs_device():
    """Every tensor a loss makes (indices, targets, counts) on its inputs' device:
    on a GPU a CPU index or target raises, or costs a copy. The "meta" device
    stands in for a GPU here: it mixes with CPU tensors as a GPU does (only 0-dim
    CPU values are accepted)."""
    z1, z2 = (torch.randn(6, 5, device="meta") for _ in range(2))
    queue = torch.randn(7, 5, device="meta")
    scores = [torch.randn(6, 4, device="meta") for _ in range(2)]
    outs = [losses.negative_cosine(z1, z2), losses.byol_regression(z1, z2),
            losses.nt_xent(z1, z2, 0.2), losses.moco_infonce(z1, z2, queue, 0.2),
            losses.barlow_twins(z1, z2, 5e-3), losses.vicreg(z1, z2, 25, 25, 1),
            losses.sinkhorn(scores[0], 0.05, 3),
            losses.swapped_prediction([losses.sinkhorn(s, 0.05, 3) for s in scores], scores, 0.1)]
    assert all(o.device.type == "meta" for o in outs)
