"""E-SSL's rotation head (--aux essl): the method trains on its own views only,
the head's loss is the cross-entropy of each extra view's emitted quarter turn
from one backbone call over the extra views (a naive recomputation), the
recipe must carry the rotated views, and the turn becomes learnable: a few
steps on turned copies of fixed images lower the loss."""

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from pipelines.batch import Batch
from pipelines.params import identity
from pipelines.recipe import preset, with_rotated_views
from trainer.build import build_objective, rotated_views
from trainer.config import Config


def _cfg(**kw):
    return Config(data="-", backbone="small", size=16, proj_hidden=32, proj_dim=16,
                  pred_hidden=8, probe=False, aux="essl", essl_views=2, **kw)


def _batch(b=8, seed=0, turns=None):
    g = torch.Generator().manual_seed(seed)
    params = identity(b, 4)
    params["crop"] = torch.rand(b, 4, 4, generator=g)
    params["rot"][:, 2:, 0] = (torch.randint(0, 4, (b, 2), generator=g).float()
                               if turns is None else turns)
    views = [torch.randn(b, 3, s, s, generator=g) for s in (16, 16, 8, 8)]
    return Batch(views, params, torch.zeros(b).long(), torch.arange(b))


def test_rotated_views_come_from_the_config():
    assert rotated_views(_cfg()) == (2, None)
    assert rotated_views(_cfg(essl_size=12)) == (2, 12)
    assert rotated_views(dataclasses.replace(_cfg(), aux="augself")) == (0, None)


def test_method_sees_its_views_and_head_matches_naive_cross_entropy():
    recipe = with_rotated_views(preset("augself", 16), 2, 8)
    torch.manual_seed(0)
    obj = build_objective(_cfg(), recipe, 0).train()
    naive = copy.deepcopy(obj)
    batch = _batch()
    logs = obj(batch)
    # the method alone, on the first two views: the same SSL loss
    ssl = naive.method(batch.first(2))["loss"]
    assert logs["ssl"].item() == pytest.approx(ssl.item(), rel=1e-6)
    # the head: one backbone call over the extra views (view-major), CE of their turns
    f = naive.method.backbone(torch.cat(batch.views[2:]))
    turns = torch.cat([batch.params["rot"][:, 2, 0], batch.params["rot"][:, 3, 0]]).long()
    ce = F.cross_entropy(naive.aux.predictor(f), turns)
    assert logs["essl"].item() == pytest.approx(ce.item(), rel=1e-5)
    assert logs["loss"].item() == pytest.approx(ssl.item() + 0.4 * ce.item(), rel=1e-5)


def test_essl_needs_the_rotated_views_in_the_recipe():
    with pytest.raises(ValueError, match="must be the rotated ones"):
        build_objective(_cfg(), preset("augself", 16), 0)


def test_the_turn_is_learnable():
    """Fixed images turned every way: 30 steps of the head and backbone lower the
    rotation loss well below chance (log 4 = 1.386) on those images."""
    recipe = with_rotated_views(preset("augself", 16), 2, 8)
    torch.manual_seed(0)
    obj = build_objective(_cfg(essl_weight=1.0), recipe, 0).train()
    opt = torch.optim.SGD(obj.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    base = torch.rand(16, 3, 8, 8, generator=g)
    turns = torch.randint(0, 4, (16, 2), generator=g)
    batch = _batch(16, turns=turns.float())
    for v in (2, 3):  # the extra views really are their turns of the base images
        batch.views[v] = torch.stack([x.rot90(int(k), (-2, -1)) for x, k in
                                      zip(base, turns[:, v - 2])])
    first = obj(batch)["essl"].item()
    for _ in range(30):
        out = obj(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    assert first > 1.0 and out["essl"].item() < 0.5 * first, (first, out["essl"].item())
