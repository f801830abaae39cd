"""The parameter-conditioned projector (--aux condproj): the projector's output
depends on each view's parameters, gradients reach the augmentation encoder,
the feature columns keep the projector's initialisation, and a momentum
method's target projector is a conditioned copy that the momentum update moves."""

import types

import pytest
import torch

from pipelines.params import identity
from trainer import condproj
from trainer.methods import BYOL, Heads, SimSiam, Supervised
from trainer.models import SmallResNet


def _batch(b=8, s=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    params = identity(b, 2)
    params["crop"] = torch.rand(b, 2, 4, generator=g)
    params["color"] = 1 + 0.2 * torch.randn(b, 2, 4, generator=g)
    views = [torch.randn(b, 3, s, s, generator=g) for _ in range(2)]
    return types.SimpleNamespace(views=views, params=params, labels=torch.zeros(b).long())


def _method(cls):
    torch.manual_seed(0)
    net = SmallResNet()
    return cls(net, net.num_features, Heads(proj_hidden=32, proj_dim=16, pred_hidden=8),
               large_images=False)


def test_projector_sees_the_parameters_and_trains_its_encoder():
    m = _method(SimSiam)
    first = m.projector[0].weight.detach().clone()
    condproj.install(m)
    wide = m.projector.projector[0].weight
    assert wide.shape[1] == first.shape[1] + 64
    assert torch.equal(wide[:, :first.shape[1]], first)  # feature columns unchanged
    batch = _batch()
    f = torch.randn(8, m.features)
    a = m.project(f, batch, 0)
    other = _batch(seed=1)
    assert not torch.allclose(a, m.project(f, other, 0))  # other parameters, other output
    m.train()
    out = m(batch)
    out["loss"].backward()
    enc = m.projector.encoder
    assert enc[1].weight.grad is not None and enc[1].weight.grad.abs().sum() > 0


def test_target_projector_is_a_conditioned_copy_moved_by_momentum():
    m = _method(BYOL)
    condproj.install(m)
    assert isinstance(m.target_projector, condproj.Conditioned)
    online, target = m.projector.encoder[1].weight, m.target_projector.encoder[1].weight
    assert torch.equal(online, target) and not target.requires_grad
    with torch.no_grad():
        online.add_(1.0)
    before = target.detach().clone()
    m.after_step(0.5)
    moved = target - before
    assert moved.abs().min() > 0 and (moved < 1.0).all()  # toward online, not onto it
    batch = _batch()
    m.train()
    assert torch.isfinite(m(batch)["loss"])


def test_methods_without_a_projector_are_refused():
    net = SmallResNet()
    sup = Supervised(net, net.num_features, Heads(num_classes=3), large_images=False)
    with pytest.raises(ValueError, match="condproj needs a method with a projector"):
        condproj.install(sup)
