"""The parameter-conditioned projector (--aux condproj): the projector's output
depends on each view's parameters, gradients reach the augmentation encoder,
the feature columns keep the projector's initialisation, and a momentum
method's target projector is a conditioned copy that the momentum update moves."""

import pytest
import torch

from pipelines.batch import Batch
from pipelines.params import identity
from trainer import condproj
from trainer.config import Config
from trainer.methods import BYOL, MoCo, SimSiam, Supervised
from trainer.models import SmallResNet


def _batch(b=8, s=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    params = identity(b, 2)
    params["crop"] = torch.rand(b, 2, 4, generator=g)
    params["color"] = 1 + 0.2 * torch.randn(b, 2, 4, generator=g)
    views = [torch.randn(b, 3, s, s, generator=g) for _ in range(2)]
    return Batch(views, params, torch.zeros(b).long(), torch.arange(b))


def _method(cls):
    torch.manual_seed(0)
    net = SmallResNet()
    return cls(net, net.num_features, Config(proj_hidden=32, proj_dim=16, pred_hidden=8),
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
    # target <- m target + (1 - m) online, online = target + 1: every weight moves by
    # exactly 1 - m, with BYOL's m at half of training 1 - (1 - 0.996)(cos(pi/2) + 1)/2
    # = 0.998 (a swapped EMA, the target moved 0.998 towards online, moves 0.998)
    torch.testing.assert_close(moved, torch.full_like(moved, 0.002), rtol=0, atol=1e-6)
    batch = _batch()
    m.train()
    assert torch.isfinite(m(batch)["loss"])


@pytest.mark.parametrize("cls,progress,m", [(BYOL, 0.0, 0.996), (BYOL, 0.5, 0.998),
                                             (BYOL, 1.0, 1.0), (BYOL, 0.25, None),
                                             (MoCo, 0.0, 0.999), (MoCo, 0.7, 0.999)])
def test_momentum_encoders_follow_their_papers_schedule(cls, progress, m):
    """BYOL (Grill et al. 2020, sec. 3.2): tau = 1 - (1 - 0.996)(cos(pi k/K) + 1)/2,
    from 0.996 to 1; MoCo (He et al. 2020, eq. 2): a constant 0.999. Every target
    weight (backbone and projector) moves by exactly (1 - tau)(online - target)."""
    import math

    if m is None:
        m = 1 - 0.004 * (math.cos(math.pi * progress) + 1) / 2
    meth = _method(cls)
    pairs = [(meth.backbone, meth.target_backbone), (meth.projector, meth.target_projector)]
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for online, _ in pairs:
            for p in online.parameters():
                p.add_(torch.randn(p.shape, generator=g))
    before = [(list(o.parameters()), [t.detach().clone() for t in tg.parameters()])
              for o, tg in pairs]
    meth.after_step(progress)
    for (_, target), (o_params, t_before) in zip(pairs, before):
        for po, pt, t0 in zip(o_params, target.parameters(), t_before):
            want = t0 + (1 - m) * (po.detach() - t0)
            torch.testing.assert_close(pt.detach(), want, rtol=1e-6, atol=1e-6)


def test_methods_without_a_projector_are_refused():
    net = SmallResNet()
    sup = Supervised(net, net.num_features, Config(), large_images=False, num_classes=3)
    with pytest.raises(ValueError, match="condproj needs a method with a projector"):
        condproj.install(sup)
