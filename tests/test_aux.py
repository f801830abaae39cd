"""AugSelf targets computed by hand from the parameters; AugSelf and EquiMod
losses against naive recomputations."""

import dataclasses
import math

import pytest
import torch

from pipelines.params import flat, identity, join
from pipelines.recipe import preset
from trainer import augself, equimod
from trainer.augself import AugSelf


class B:  # the part of a Batch the auxiliary heads read
    def __init__(self, params):
        self.params, self.row = params, join(params)


def turning(recipe):
    """The recipe with every view rotating (what a table with the rot row needs)."""
    return dataclasses.replace(recipe, views=tuple(dataclasses.replace(v, rotate=True)
                                                   for v in recipe.views))


def params_by_hand():
    """Three samples, two views (augself preset: jitter 0.4/0.4/0.4/0.1, so the
    ranges are 0.8 wide for b, c, s and 0.2 for hue)."""
    p = identity(3, 2)
    # sample 0: view 1 crop (y0 .1, x0 .2, h .5, w .4), view 2 the whole image;
    #           view 1 jittered (1.2, 0.8, 1.0, +0.05), view 2 jitter skipped.
    p["crop"][0, 0] = torch.tensor([0.1, 0.2, 0.5, 0.4])
    p["color"][0, 0] = torch.tensor([1.2, 0.8, 1.0, 0.05])
    # sample 1: both flipped; view 2 blurred with sigma 1.5; both jittered.
    p["flip"][1] = 1.0
    p["blur"][1, 1] = 1.5
    p["color"][1, 0] = torch.tensor([0.6, 1.4, 1.2, -0.1])
    p["color"][1, 1] = torch.tensor([1.0, 1.0, 0.6, 0.02])
    # sample 2: only view 2 flipped, crops (0, 0, 1, .5) and (.25, .5, .5, .5); gray on view 1.
    p["flip"][2, 1] = 1.0
    p["crop"][2, 0] = torch.tensor([0.0, 0.0, 1.0, 0.5])
    p["crop"][2, 1] = torch.tensor([0.25, 0.5, 0.5, 0.5])
    p["gray"][2, 0] = 1.0
    return p


def test_augself_targets_by_hand():
    table = augself.rows({"crop": 1, "color": 1, "flip": 1, "blur": 1, "gray": 1})
    t = augself.targets(table, join(params_by_hand()), preset("augself", 32))
    # crop: centre (y0 + h/2, x0 + w/2) and size, view 1 minus view 2.
    want_crop = torch.tensor([
        [0.35 - 0.5, 0.4 - 0.5, 0.5 - 1.0, 0.4 - 1.0],
        [0.0, 0.0, 0.0, 0.0],
        [0.5 - 0.5, 0.25 - 0.75, 1.0 - 0.5, 0.5 - 0.5]])
    # color: (f - 1)/0.8 for b, c, s; hue/0.2; a skipped jitter is 0.
    want_color = torch.tensor([
        [0.2 / 0.8, -0.2 / 0.8, 0.0, 0.05 / 0.2],
        [(-0.4 - 0.0) / 0.8, (0.4 - 0.0) / 0.8, (0.2 - -0.4) / 0.8, (-0.1 - 0.02) / 0.2],
        [0.0, 0.0, 0.0, 0.0]])
    want_flip = torch.tensor([[1.0], [1.0], [0.0]])     # same-or-not
    want_blur = torch.tensor([[0.0], [-1.5], [0.0]])
    want_gray = torch.tensor([[0.0], [0.0], [1.0]])
    for name, want, sym in [("crop", want_crop, -1), ("color", want_color, -1),
                            ("flip", want_flip, 1), ("blur", want_blur, -1),
                            ("gray", want_gray, -1)]:
        got = t[name]
        assert got.shape == (6, want.shape[1])
        torch.testing.assert_close(got[:3], want, atol=1e-6, rtol=0, msg=name)
        # the (v2, v1) order: differences flip sign, same-or-not does not
        torch.testing.assert_close(got[3:], sym * want if sym < 0 else want, atol=1e-6,
                                   rtol=0, msg=name)


def _naive_head(heads, r, widths, hidden):
    """Row r of a RowHeads as the separate mlp() head it stands for (eval mode)."""
    from trainer.models import mlp

    o, blk = sum(widths[:r]), slice(r * hidden, (r + 1) * hidden)
    m = mlp(heads.lin1.in_features, hidden, widths[r], layers=3, last_bn=False).eval()
    with torch.no_grad():
        m[0].weight.copy_(heads.lin1.weight[blk])
        m[3].weight.copy_(heads.w2[blk, blk])
        m[6].weight.copy_(heads.w3[o:o + widths[r], blk])
        m[6].bias.copy_(heads.b3[o:o + widths[r]])
        for bn, src in ((m[1], heads.bn1), (m[4], heads.bn2)):
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(bn, name).copy_(getattr(src, name)[blk])
    return m


def _naive_term(r, pred, want):
    """One row's loss as the paper states it, on its separate head's output."""
    F = torch.nn.functional
    if r.loss == "bce":
        return F.binary_cross_entropy_with_logits(pred, want)
    if r.loss == "ce":  # the class of each pair: which one-hot column is set
        return F.cross_entropy(pred, want.argmax(1))
    return ((torch.tanh(pred) - want) ** 2).mean()


def test_augself_rot_row_is_turns_apart_mod_4():
    p = identity(3, 2)
    p["rot"][:, 0, 0] = torch.tensor([0.0, 3.0, 1.0])
    p["rot"][:, 1, 0] = torch.tensor([0.0, 1.0, 2.0])
    t = augself.targets(augself.rows({"rot": 1.0}), join(p), preset("augself", 32))["rot"]
    # (v1, v2): 0, 2, 3 (1 - 2 = -1 = 3 mod 4); (v2, v1): 0, 2, 1
    assert t.argmax(1).tolist() == [0, 2, 3, 0, 2, 1] and (t.sum(1) == 1).all()


def test_augself_zero_weight_removes_row_and_loss_matches_naive():
    """The batched head and loss against separate per-row heads (copied from its
    blocks) and the per-row target functions, one sample pair at a time."""
    table = augself.rows({"crop": 1.0, "color": 0.5, "flip": 0.25, "gray": 0.0, "rot": 0.5})
    assert [r.field for r in table] == ["crop", "color", "flip", "rot"]
    torch.manual_seed(0)
    recipe = turning(preset("augself", 32))
    head = AugSelf(8, table, recipe, hidden=16).eval()
    with torch.no_grad():  # non-trivial BN statistics, so that a block mix-up shows
        for bn in (head.heads.bn1, head.heads.bn2):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
    f1, f2 = torch.randn(3, 8), torch.randn(3, 8)
    params = params_by_hand()
    params["rot"][:, :, 0] = torch.tensor([[1.0, 0.0], [2.0, 3.0], [3.0, 3.0]])
    out = head([f1, f2], B(params))
    want = augself.targets(table, join(params), recipe)
    widths = [r.width for r in table]
    total = 0.0
    for i, r in enumerate(table):
        naive = _naive_head(head.heads, i, widths, 16)
        pred = torch.stack([naive(torch.cat(pair)[None])[0]
                            for pair in [(f1[k], f2[k]) for k in range(3)]
                            + [(f2[k], f1[k]) for k in range(3)]])
        term = _naive_term(r, pred, want[r.field])
        assert out[f"augself/{r.field}"].item() == pytest.approx(term.item(), rel=1e-5)
        total += r.weight * term.item()
    assert out["loss"].item() == pytest.approx(total, rel=1e-5)


def test_augself_logs_each_row_in_float32_under_bf16_autocast():
    """Under bf16 autocast (every GPU run) the logged row terms are the fp32 ones
    the loss is made of: their weighted sum is the total to fp32 rounding, and
    each equals the term computed without autocast from the same prediction.
    The product that makes them once ran under autocast and logged each row in
    bf16 (3 significant digits; found by test_train on an H200)."""
    table = augself.rows({"crop": 1.0, "color": 0.5, "flip": 0.25, "rot": 0.5})
    torch.manual_seed(1)
    head = AugSelf(8, table, turning(preset("augself", 32)), hidden=16).eval()
    f1, f2 = torch.randn(6, 8), torch.randn(6, 8)
    params = identity(6, 2)
    params["crop"] += 0.1 * torch.rand(params["crop"].shape)
    params["color"] += 0.3 * torch.rand(params["color"].shape)
    params["rot"][:, :, 0] = torch.randint(0, 4, (6, 2)).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head([f1, f2], B(params))
    assert all(out[f"augself/{r.field}"].dtype == torch.float32 for r in table)
    total = sum(r.weight * out[f"augself/{r.field}"].double() for r in table)
    assert total.item() == pytest.approx(out["loss"].item(), rel=1e-6)


def test_batched_head_trains_like_separate_heads():
    """Training mode (batch statistics, running statistics updated) and gradients:
    the batched head against separate per-row heads on the same batch of pairs."""
    table = augself.rows({"crop": 1.0, "color": 0.5, "flip": 0.25, "rot": 0.5})
    torch.manual_seed(1)
    recipe = turning(preset("augself", 32))
    head = AugSelf(8, table, recipe, hidden=16)
    widths = [r.width for r in table]
    naive = [_naive_head(head.heads, i, widths, 16).train() for i in range(len(table))]
    f1, f2 = torch.randn(3, 8), torch.randn(3, 8)
    params = params_by_hand()
    params["rot"][:, :, 0] = torch.tensor([[1.0, 0.0], [2.0, 3.0], [3.0, 3.0]])
    head([f1, f2], B(params))["loss"].backward()
    want = augself.targets(table, join(params), recipe)
    z = torch.cat([torch.cat([f1, f2], 1), torch.cat([f2, f1], 1)])  # (v1, v2) then (v2, v1)
    total = 0.0
    for r, m in zip(table, naive):
        total = total + r.weight * _naive_term(r, m(z), want[r.field])
    total.backward()
    h, H = head.heads, 16
    o = 0
    for i, (w, m) in enumerate(zip(widths, naive)):
        blk = slice(i * H, (i + 1) * H)
        for got, ref in ((h.lin1.weight.grad[blk], m[0].weight.grad),
                         (h.w2.grad[blk, blk], m[3].weight.grad),
                         (h.w3.grad[o:o + w, blk], m[6].weight.grad),
                         (h.b3.grad[o:o + w], m[6].bias.grad),
                         (h.bn1.weight.grad[blk], m[1].weight.grad),
                         (h.bn2.running_mean[blk], m[4].running_mean),
                         (h.bn2.running_var[blk], m[4].running_var)):
            torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-5)
        o += w
    # the off-block gradients are masked before any optimiser sees them
    assert (h.w2.grad[h.m2 == 0] == 0).all() and (h.w3.grad[h.m3 == 0] == 0).all()


def test_batched_targets_equal_the_row_definitions():
    """AugSelf's one-product targets equal the per-row target functions, every row
    (row 2i the order (v1, v2) of sample i, row 2i+1 the order (v2, v1)),
    on random parameters, for views whose colour ranges differ (the centres of the
    colour code then do not cancel)."""
    table = augself.rows({k: 1.0 for k in ("crop", "color", "flip", "blur", "gray",
                                           "solarize", "rot")})
    base = preset("byol", 32)
    recipe = turning(dataclasses.replace(base, views=(
        base.views[0], dataclasses.replace(base.views[1], jitter=(0.2, 0.6, 0.3, 0.05)))))
    g = torch.Generator().manual_seed(3)
    params = identity(64, 2)
    for k in params:
        params[k] = torch.rand(params[k].shape, generator=g)
    for k in ("flip", "gray", "solarize"):
        params[k] = params[k].round()
    params["rot"] = (params["rot"] * 4).floor()
    head = AugSelf(8, table, recipe, hidden=4)
    want = augself.targets(table, join(params), recipe)
    got = head.targets(join(params))
    stacked = torch.cat([want[r.field] for r in table], 1)  # (v1, v2) rows, then (v2, v1)
    interleaved = stacked.view(2, 64, -1).transpose(0, 1).reshape(128, -1)
    torch.testing.assert_close(got, interleaved, atol=1e-6, rtol=1e-6)


def test_row_heads_stay_independent_blocks():
    """A training step moves only the diagonal blocks: the masked entries of the
    block-diagonal layers stay exactly zero (weight decay and momentum included)."""
    table = augself.rows({"crop": 1.0, "color": 1.0})
    head = AugSelf(8, table, preset("augself", 32), hidden=16)
    opt = torch.optim.SGD(head.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1,
                          foreach=True)
    params = params_by_hand()
    for _ in range(3):
        loss = head([torch.randn(3, 8), torch.randn(3, 8)], B(params))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    h = head.heads
    assert (h.w2[h.m2 == 0] == 0).all() and (h.w3[h.m3 == 0] == 0).all()
    assert (h.w2[h.m2 == 1] != 0).all()


def test_equimod_loss_matches_naive_infonce():
    torch.manual_seed(0)
    m = equimod.EquiMod(8, dim=6, hidden=16).eval()
    f1, f2 = torch.randn(4, 8), torch.randn(4, 8)
    params = params_by_hand()
    params = {k: torch.cat([v, v[:1]]) for k, v in params.items()}  # 4 samples
    got = m([f1, f2], B(params))["loss"].item()
    y1, y2 = m.projector(f1), m.projector(f2)
    p1, p2 = flat(params, 0), flat(params, 1)
    # predicted embedding of view b from (y_a, embed([p_a, p_b])), both orders
    pred = [m.predictor(torch.cat([y1, m.embed(torch.cat([p1, p2], 1))], 1)),
            m.predictor(torch.cat([y2, m.embed(torch.cat([p2, p1], 1))], 1))]
    target = torch.cat([y2, y1])
    pred = torch.cat(pred)
    a = torch.nn.functional.normalize(torch.cat([target, pred]), dim=1).detach()
    n, t, total = len(target), 0.2, 0.0
    for i in range(2 * n):
        sims = [float(a[i] @ a[k]) / t for k in range(2 * n)]
        pos = sims[(i + n) % (2 * n)]
        total += -(pos - math.log(sum(math.exp(s) for k, s in enumerate(sims) if k != i)))
    assert got == pytest.approx(total / (2 * n), rel=1e-5)


def test_targets_read_the_first_two_views_of_a_multi_view_batch_and_fit_an_fp64_run():
    """SwAV's multi-crop and E-SSL's rotated views put more than two views in the
    Batch: AugSelf's targets are those of views 1 and 2 alone. In an fp64 run the
    head is float64 and the parameters stay float32 (the Batch contract): the
    targets are the float32 ones, widened."""
    table = augself.rows({k: 1.0 for k in ("crop", "color", "flip", "blur", "gray",
                                           "solarize", "rot")})
    recipe = turning(preset("swav", 32))
    assert recipe.num_views > 2
    g = torch.Generator().manual_seed(9)
    params = identity(5, recipe.num_views)
    for k in params:
        params[k] += torch.rand(params[k].shape, generator=g)
    params["rot"] = torch.randint(0, 4, (5, recipe.num_views, 1), generator=g).float()
    head = AugSelf(8, table, recipe, hidden=16)
    two = join(params)[:, :2].contiguous()
    want = head.targets(two)
    assert torch.equal(head.targets(join(params)), want)
    wide = head.double().targets(join(params))
    assert wide.dtype == torch.float64
    torch.testing.assert_close(wide, want.double(), rtol=1e-6, atol=1e-6)


def test_rows_keep_the_weighted_ones_and_refuse_unknown_names():
    """A row is in the table only when its weight is given and above 0 (a row left
    out of ``weights`` weighs 0), with its kind of loss; an unknown name is
    refused, named."""
    assert augself.rows({}) == []
    for field in ("crop", "color", "flip", "blur", "gray", "solarize", "rot"):
        (row,) = augself.rows({field: 0.5})
        assert (row.field, row.weight) == (field, 0.5)
    kinds = {r.field: (r.width, r.loss) for r in augself.rows(
        {k: 1.0 for k in ("crop", "color", "flip", "blur", "gray", "solarize", "rot")})}
    assert kinds == {"crop": (4, "mse_tanh"), "color": (4, "mse_tanh"), "flip": (1, "bce"),
                     "blur": (1, "mse_tanh"), "gray": (1, "mse_tanh"),
                     "solarize": (1, "mse_tanh"), "rot": (4, "ce")}
    with pytest.raises(ValueError, match=r"unknown AugSelf rows \['bogus', 'hue'\]"):
        augself.rows({"crop": 1.0, "hue": 1.0, "bogus": 1.0})
    with pytest.raises(ValueError, match="unknown loss 'mse'"):
        augself.Row("crop", 4, "mse", 1.0, augself.centre_and_size)


def test_row_targets_stay_on_the_params_device():
    """The row definitions make their constants (ranges, centres, classes) on the
    parameters' device ("meta" standing in for a GPU: a CPU constant of more than
    one value does not mix with it)."""
    table = augself.rows({k: 1.0 for k in ("crop", "color", "flip", "blur", "gray",
                                           "solarize", "rot")})
    params = {k: t.to("meta") for k, t in identity(3, 2).items()}
    got = augself.targets(table, join(params), preset("augself", 32))
    assert set(got) == {r.field for r in table}
    assert all(t.device.type == "meta" for t in got.values())


def test_augself_rot_without_turning_views_is_refused_at_build_time():
    """The config refuses --augself-rot W when neither of the first two views turns
    (tests/test_hostile_config.py); the objective built from a Config that skipped
    that check, with such a recipe, is refused too: its rot head would train on
    class 0 alone."""
    from trainer.build import build_objective
    from trainer.config import from_argv

    cfg = from_argv(["--data", "-", "--out", "-", "--method", "simsiam", "--aux", "augself",
                     "--backbone", "small", "--size", "32", "--no-probe"])
    cfg.augself_rot = 1.0  # past validate(): what a caller building by hand could do
    with pytest.raises(ValueError, match="row 'rot'.*neither turns.*rotate: true"):
        build_objective(cfg, preset("augself", 32), 0)
    objective = build_objective(cfg, turning(preset("augself", 32)), 0)
    assert [r.field for r in objective.aux.table] == ["crop", "color", "rot"]
