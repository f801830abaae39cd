"""The parameter schema (pipelines/params.py) on its own: the layout is derived
from FIELDS, split/join/flat/view are inverse views of one flat row, check()
names every way a parameter dict can break the schema, and identity() is the
untouched view in float32 on the device asked for. Property-based over batch and
view counts (hypothesis)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines import params as P


def test_layout_is_derived_from_the_fields():
    widths = list(P.FIELDS.values())
    assert P.WIDTH == sum(widths) == len(P.NAMES)
    for i, k in enumerate(P.FIELDS):
        assert P.OFFSETS[k] == sum(widths[:i])
    assert P.DRAWN == tuple(P.FIELDS)[1:] and P.DRAWN_AT == P.FIELDS["crop"]
    assert P.DRAWN_WIDTH == P.WIDTH - P.FIELDS["crop"]
    assert P.DRAWN_NAMES == tuple(P.NAMES[P.DRAWN_AT:])
    assert [P.AT[n] for n in P.DRAWN_NAMES] == list(range(P.DRAWN_WIDTH))
    # each field's names sit at its offset: the flat row reads like the dict
    assert P.NAMES[P.OFFSETS["color"]:P.OFFSETS["color"] + 4] == [
        "brightness", "contrast", "saturation", "hue"]
    assert P.NAMES[P.OFFSETS["rot"]] == "rot"


def _random(b: int, v: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.rand(b, v, w, generator=g) for k, w in P.FIELDS.items()}


@settings(max_examples=40, deadline=None)
@given(b=st.integers(1, 6), v=st.integers(1, 5), seed=st.integers(0, 2**31 - 1))
def test_split_join_flat_and_view_are_one_row(b, v, seed):
    p = _random(b, v, seed)
    P.check(p, b, v)
    row = P.join(p)
    assert row.shape == (b, v, P.WIDTH)
    back = P.split(row)
    assert list(back) == list(P.FIELDS)
    for k, t in back.items():
        assert torch.equal(t, p[k])
        assert t.untyped_storage().data_ptr() == row.untyped_storage().data_ptr()  # a view
        assert torch.equal(row[..., P.OFFSETS[k]:P.OFFSETS[k] + P.FIELDS[k]], p[k])
    drawn = P.split(row[..., P.DRAWN_AT:], P.DRAWN)
    assert list(drawn) == list(P.DRAWN) and all(torch.equal(drawn[k], p[k]) for k in P.DRAWN)
    assert torch.equal(P.join(drawn, P.DRAWN), row[..., P.DRAWN_AT:])
    for j in range(v):
        assert torch.equal(P.flat(p, j), row[:, j])
    i, j = b - 1, v - 1
    one = P.view(p, i, j)
    assert all(torch.equal(one[k], p[k][i, j]) for k in P.FIELDS)
    assert torch.equal(torch.cat([one[k] for k in P.FIELDS]), row[i, j])


@pytest.mark.parametrize("break_it,says", [
    (lambda p: p.pop("rot"), "parameter fields"),
    (lambda p: p.update(extra=torch.zeros(2, 3, 1)), "parameter fields"),
    (lambda p: p.update(flip=p["flip"].double()), r"params\['flip'\]: torch.float64"),
    (lambda p: p.update(color=p["color"][:, :2]), r"params\['color'\].*\(2, 2, 4\)"),
    (lambda p: p.update(crop=p["crop"][:1]), r"params\['crop'\].*\(1, 3, 4\)"),
    (lambda p: p.update(blur=torch.zeros(2, 3, 2)), r"params\['blur'\].*\(2, 3, 2\)"),
    (lambda p: p.update(gray=torch.zeros(2, 3)), r"params\['gray'\]"),
])
def test_check_names_each_break_of_the_schema(break_it, says):
    p = P.identity(2, 3)
    P.check(p, 2, 3)
    break_it(p)
    with pytest.raises(ValueError, match=says):
        P.check(p, 2, 3)


def test_identity_is_the_untouched_view_in_float32_wherever_made():
    saved = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # a user's default: the schema is float32 still
    try:
        p = P.identity(3, 2)
    finally:
        torch.set_default_dtype(saved)
    P.check(p, 3, 2)
    for k, t in p.items():
        assert torch.equal(t, torch.tensor(P.IDENTITY[k]).expand(3, 2, -1)), k
    assert p["crop"][0, 0].tolist() == [0.0, 0.0, 1.0, 1.0]   # the whole image
    assert p["color"][0, 0].tolist() == [1.0, 1.0, 1.0, 0.0]  # factors 1, hue shift 0
    p["flip"][0, 0] = 1.0  # each sample's own memory, not an expanded view
    assert p["flip"][1, 0].item() == 0.0 and p["flip"][0, 1].item() == 0.0
    assert all(t.device.type == "meta" for t in P.identity(2, 2, device="meta").values())
