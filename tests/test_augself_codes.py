"""AugSelf's targets come from each row's code (trainer/augself.py): the per-row
targets and the head's one-product targets both equal the rows written out by
hand here (the oracle), for every row of the table and for regression rows of
more than one value added here, on fuzzed parameters and colour ranges; rows
whose kind or code shape is wrong are refused when built."""

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.params import FIELDS, identity, join
from pipelines.recipe import ViewRecipe, preset
from trainer import augself
from trainer.augself import AugSelf, Row

ALL = ("crop", "color", "flip", "blur", "gray", "solarize", "rot")

# ---- the oracle: each row written out on the named fields, view a minus view b


def _crop_code(c):
    return torch.stack([c[:, 0] + c[:, 2] / 2, c[:, 1] + c[:, 3] / 2, c[:, 2], c[:, 3]], 1)


def _color_code(c, vr):
    cols = []
    for k, ((lo, hi), centre) in enumerate(zip(vr.color_ranges(), (1.0, 1.0, 1.0, 0.0))):
        cols.append((c[:, k] - centre) / ((hi - lo) or 1.0))
    return torch.stack(cols, 1)


def naive(field, p, a, b, recipe):
    """The target of the table's row ``field`` for the views (a, b): (B, width)."""
    if field == "crop":
        return _crop_code(p["crop"][:, a]) - _crop_code(p["crop"][:, b])
    if field == "color":
        return (_color_code(p["color"][:, a], recipe.views[a])
                - _color_code(p["color"][:, b], recipe.views[b]))
    if field == "flip":  # same-or-not
        return (p["flip"][:, a] == p["flip"][:, b]).float()
    if field == "rot":  # which of 4 classes: (turns_a - turns_b) mod 4
        d = (p["rot"][:, a, 0] - p["rot"][:, b, 0]).long() % 4
        return torch.nn.functional.one_hot(d, 4).float()
    return p[field][:, a] - p[field][:, b]  # blur, gray, solarize


# Two multi-value regression rows, each with its own code and oracle. The old
# code map gave every column of a width-k row the field's first value: both of
# these would have been trained on wrong targets without a word.

def _size_code(vr):
    """crop -> (h, w) / 2: the crop's half size (width 2 over part of crop)."""
    M = torch.zeros(4, 2)
    M[2, 0] = M[3, 1] = 0.5
    return M, torch.zeros(2)


def _size_naive(p, a, b, recipe):
    return (p["crop"][:, a, 2:] - p["crop"][:, b, 2:]) / 2


def _mix_code(vr):
    """color -> ((b - c)/Rb, 2 s + hue/Rh - 1): values mixed, the view's ranges in
    the constant of the second, so that it does not cancel between views."""
    (blo, bhi), _, _, (hlo, hhi) = vr.color_ranges()
    rb, rh = (bhi - blo) or 1.0, (hhi - hlo) or 1.0
    M = torch.zeros(4, 2)
    M[0, 0], M[1, 0] = 1.0 / rb, -1.0 / rb
    M[2, 1], M[3, 1] = 2.0, 1.0 / rh
    return M, torch.tensor([0.0, -1.0 + rh])


def _mix_naive(p, a, b, recipe):
    def code(c, vr):
        (blo, bhi), _, _, (hlo, hhi) = vr.color_ranges()
        rb, rh = (bhi - blo) or 1.0, (hhi - hlo) or 1.0
        return torch.stack([(c[:, 0] - c[:, 1]) / rb, 2 * c[:, 2] + c[:, 3] / rh - 1 + rh], 1)
    return code(p["color"][:, a], recipe.views[a]) - code(p["color"][:, b], recipe.views[b])


EXTRA = [(Row("crop", 2, "mse_tanh", 0.5, _size_code, name="crop_size"), _size_naive),
         (Row("color", 2, "mse_tanh", 0.25, _mix_code, name="color_mix"), _mix_naive)]


# ---- fuzzed recipes and parameters

strength = st.one_of(st.just(0.0), st.floats(0.01, 1.5))
hue = st.one_of(st.just(0.0), st.floats(0.001, 0.5))


@st.composite
def cases(draw):
    """(recipe with 2-3 views, each its own jitter and turning; parameters (field ->
    (B, V, width)) in each field's domain)."""
    v = draw(st.integers(2, 3))
    views = tuple(ViewRecipe(size=16, jitter=(draw(strength), draw(strength), draw(strength),
                                              draw(hue)), rotate=True) for _ in range(v))
    recipe = dataclasses.replace(preset("augself", 16), views=views)
    b = draw(st.integers(1, 5))

    def values(field, elements):
        n = b * v * FIELDS[field]
        xs = draw(st.lists(elements, min_size=n, max_size=n))
        return torch.tensor(xs, dtype=torch.float32).view(b, v, FIELDS[field])

    unit, flag = st.floats(0, 1, width=32), st.sampled_from([0.0, 1.0])
    p = {"crop": values("crop", unit), "flip": values("flip", flag),
         "color": values("color", st.floats(0, 2, width=32)) - torch.tensor([0, 0, 0, 1.0]),
         "gray": values("gray", flag), "blur": values("blur", st.floats(0, 3, width=32)),
         "solarize": values("solarize", flag),
         "rot": values("rot", st.sampled_from([0.0, 1.0, 2.0, 3.0]))}
    return recipe, p


def _close(got, want, msg):
    # colour codes divide by ranges as narrow as 0.002: a few float32 ulps of ~500
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, msg=msg)


def _check(table, oracle, recipe, p):
    row = join(p)
    per_row = augself.targets(table, row, recipe)
    head = AugSelf(4, table, recipe, hidden=2).targets(row)  # rows interleaved: 2i, 2i+1
    B, o = len(row), 0
    for r in table:
        for k, (a, b) in enumerate(((0, 1), (1, 0))):
            want = oracle[r.name](p, a, b, recipe)
            assert want.shape == (B, r.width)
            _close(per_row[r.name][k * B:(k + 1) * B], want, f"{r.name} ({a}, {b}) per row")
            _close(head[k::2, o:o + r.width], want, f"{r.name} ({a}, {b}) one product")
        o += r.width
    assert head.shape == (2 * B, o)


@settings(max_examples=40, deadline=None)
@given(case=cases())
def test_every_row_of_the_table_is_its_written_out_definition(case):
    recipe, p = case
    table = augself.rows({k: 1.0 for k in ALL})
    assert [r.name for r in table] == list(ALL)
    oracle = {f: (lambda p, a, b, recipe, f=f: naive(f, p, a, b, recipe)) for f in ALL}
    _check(table, oracle, recipe, p)


@settings(max_examples=40, deadline=None)
@given(case=cases())
def test_multi_value_regression_rows_follow_their_own_code(case):
    """Rows of width 2 over part of a field and over mixed values, beside the
    table's rows over the same fields (their columns and names kept apart)."""
    recipe, p = case
    base = augself.rows({"crop": 1.0, "color": 1.0, "flip": 1.0, "rot": 1.0})
    table = [base[0], EXTRA[0][0], base[1], base[2], EXTRA[1][0], base[3]]
    oracle = {r.name: (lambda p, a, b, recipe, f=r.field: naive(f, p, a, b, recipe))
              for r in base}
    oracle.update({r.name: f for r, f in EXTRA})
    _check(table, oracle, recipe, p)


def test_the_extra_rows_are_not_their_first_value_repeated():
    """The oracle of each extra row differs from what the old code map's fallback
    gave a row of width > 1 (the field's first value in every column), so the
    property above tells the two apart."""
    p = identity(1, 2)
    p["crop"][0, 0] = torch.tensor([0.1, 0.2, 0.5, 0.4])
    p["color"][0, 0] = torch.tensor([1.2, 0.8, 1.1, 0.05])
    recipe = preset("augself", 16)
    for r, f in EXTRA:
        first = (p[r.field][:, 0, :1] - p[r.field][:, 1, :1]).expand(-1, r.width)
        assert not torch.allclose(f(p, 0, 1, recipe), first, atol=1e-3), r.name


def test_the_extra_rows_train_and_log_under_their_names():
    recipe = preset("augself", 16)
    table = [*augself.rows({"crop": 1.0}), *(r for r, _ in EXTRA)]
    head = AugSelf(8, table, recipe, hidden=4)
    p = {k: t + 0.1 * torch.rand(t.shape) for k, t in identity(3, 2).items()}

    class Batch:
        row = join(p)

    out = head([torch.randn(3, 8), torch.randn(3, 8)], Batch())
    assert {"augself/crop", "augself/crop_size", "augself/color_mix"} <= set(out)
    total = sum(r.weight * out[f"augself/{r.name}"] for r in table)
    assert out["loss"].item() == pytest.approx(total.item(), rel=1e-6)


# ---- refusals


def test_a_misspelt_loss_kind_is_refused():
    with pytest.raises(ValueError, match=r"row 'crop': unknown loss 'mse_tan'.*mse_tanh, bce, ce"):
        Row("crop", 4, "mse_tan", 1.0, augself.centre_and_size)
    with pytest.raises(ValueError, match="unknown loss 'CE'"):
        Row("rot", 4, "CE", 1.0, augself.value)


@pytest.mark.parametrize("row, says", [
    # width 2 over crop with the 4-wide crop code
    (lambda: Row("crop", 2, "mse_tanh", 1.0, augself.centre_and_size),
     r"row 'crop': its code gives M \(4, 4\) and c \(4,\); a 'mse_tanh' row of width 2 over "
     r"'crop' \(4 values\) needs M \(4, 2\) and c \(2,\)"),
    # a code written for another field (crop's, on the one-value blur)
    (lambda: Row("blur", 1, "mse_tanh", 1.0, _size_code, name="blur2"),
     r"row 'blur2': its code gives M \(4, 2\).*over 'blur' \(1 value\) needs M \(1, 1\)"),
    # an offset of the wrong width
    (lambda: Row("flip", 1, "bce", 1.0, lambda vr: (torch.ones(1, 1), torch.zeros(2))),
     r"c \(2,\).*needs M \(1, 1\) and c \(1,\)"),
    # a "ce" row's code is one value (its class before mod k), not one per class
    (lambda: Row("rot", 4, "ce", 1.0, lambda vr: (torch.ones(1, 4), torch.zeros(4))),
     r"'ce' row of width 4 over 'rot' \(1 value\) needs M \(1, 1\).*one value"),
])
def test_a_code_whose_shape_does_not_fit_the_field_is_refused(row, says):
    with pytest.raises(ValueError, match=says):
        row()


def test_a_row_over_an_unknown_field_or_a_one_class_ce_row_is_refused():
    with pytest.raises(ValueError, match="unknown field 'hue'"):
        Row("hue", 1, "mse_tanh", 1.0, augself.value)
    with pytest.raises(ValueError, match=r"row 'rot': a 'ce' row needs width >= 2.*got 1"):
        Row("rot", 1, "ce", 1.0, augself.value)


def test_the_rotation_row_needs_a_turning_view():
    """With views that never turn every pair is 0 turns apart: the rot row would
    train on class 0 alone. One of the first two views turning is enough."""
    table = augself.rows({"crop": 1.0, "rot": 1.0})
    still = preset("augself", 16)
    with pytest.raises(ValueError, match="row 'rot'.*neither turns.*rotate: true"):
        AugSelf(8, table, still)
    one = dataclasses.replace(still, views=(still.views[0],
                                            dataclasses.replace(still.views[1], rotate=True)))
    AugSelf(8, table, one)
    AugSelf(8, augself.rows({"crop": 1.0}), still)  # without the row: nothing to refuse
