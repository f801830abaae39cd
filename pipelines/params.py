"""The parameter schema: the one place that says which fields every view carries,
and the one layout every backend, kernel and head derives its offsets from.

Every field is float32, shape (B, V, width) in a Batch (../shared/DESIGN.md):

    crop      4  (y0, x0, h, w) of the crop box in the source image, y0 and h
                 divided by the source height, x0 and w by its width; in [0, 1]
    flip      1  1.0 when the view was flipped left-right after the crop
    color     4  (brightness, contrast, saturation, hue): torchvision units, the
                 first three multiplicative factors, hue a fraction of a turn
    gray      1  1.0 when converted to grayscale
    blur      1  Gaussian sigma in output pixels; 0 when not applied
    solarize  1  1.0 when solarized (threshold 0.5 of the range)
    rot       1  quarter turns counter-clockwise (0, 1, 2 or 3; torch.rot90's
                 sense), applied right after the flip; 0 for a view whose recipe
                 does not rotate (E-SSL's four-fold rotation, Dangovski et al. 2022)

A view whose colour jitter was skipped reports the identity (1, 1, 1, 0).

Layout. One view's parameters flattened in FIELDS order are WIDTH values (the
GPU stage's parameter buffer, AugSelf's, EquiMod's and condproj's inputs). The
crop comes first: a loader computes it where it decodes. Everything after it
is DRAWN, per view, by the counter RNG from the view's recipe (sampling.py in
torch, photometric_cpu in numba): DRAWN_WIDTH values starting at DRAWN_AT,
named DRAWN_NAMES; ``AT[name]`` is a value's position in that drawn row. A new
field is added to VALUES (in its place in the order of operations) and
IDENTITY, in its draw and its renderers; every width, offset and name follows.
"""

from __future__ import annotations

import torch

# The schema, stated once: each field (in order of operations) and the names of
# its values; every width, offset and name list below is derived from it.
VALUES: dict[str, tuple[str, ...]] = {
    "crop": ("crop_y0", "crop_x0", "crop_h", "crop_w"),
    "flip": ("flip",),
    "color": ("brightness", "contrast", "saturation", "hue"),
    "gray": ("gray",),
    "blur": ("blur",),
    "solarize": ("solarize",),
    "rot": ("rot",),
}
FIELDS: dict[str, int] = {k: len(names) for k, names in VALUES.items()}
WIDTH = sum(FIELDS.values())
OFFSETS: dict[str, int] = {k: sum(list(FIELDS.values())[:i]) for i, k in enumerate(FIELDS)}

# A name for each of the WIDTH values, in order (reports, the augparams probe).
NAMES: list[str] = [n for names in VALUES.values() for n in names]

# What the counter RNG draws per view: every field after the crop.
DRAWN: tuple[str, ...] = tuple(FIELDS)[1:]
DRAWN_AT = OFFSETS[DRAWN[0]]
DRAWN_WIDTH = WIDTH - DRAWN_AT
DRAWN_NAMES: tuple[str, ...] = tuple(NAMES[DRAWN_AT:])
AT: dict[str, int] = {n: i for i, n in enumerate(DRAWN_NAMES)}

IDENTITY: dict[str, tuple[float, ...]] = {
    "crop": (0.0, 0.0, 1.0, 1.0),
    "flip": (0.0,),
    "color": (1.0, 1.0, 1.0, 0.0),
    "gray": (0.0,),
    "blur": (0.0,),
    "solarize": (0.0,),
    "rot": (0.0,),
}

assert list(FIELDS)[0] == "crop" and len(set(NAMES)) == WIDTH and set(IDENTITY) == set(FIELDS)
assert all(len(IDENTITY[k]) == w for k, w in FIELDS.items())


def identity(batch: int, views: int, device=None) -> dict[str, torch.Tensor]:
    """Parameters of views left untouched, (B, V, width) each."""
    return {k: torch.tensor(v, dtype=torch.float32, device=device).expand(batch, views, -1).clone()
            for k, v in IDENTITY.items()}


def check(params: dict[str, torch.Tensor], batch: int, views: int) -> None:
    """Raise ValueError unless ``params`` follows the schema exactly."""
    if set(params) != set(FIELDS):
        raise ValueError(f"parameter fields {sorted(params)} != schema {sorted(FIELDS)}")
    for k, width in FIELDS.items():
        t = params[k]
        if t.dtype != torch.float32 or tuple(t.shape) != (batch, views, width):
            raise ValueError(f"params[{k!r}]: {t.dtype} {tuple(t.shape)}, expected float32 "
                             f"{(batch, views, width)}")


def flat(params: dict[str, torch.Tensor], v: int) -> torch.Tensor:
    """View v's parameters as one (B, WIDTH) row per sample, in FIELDS order."""
    return torch.cat([params[k][:, v] for k in FIELDS], dim=1)


def split(row: torch.Tensor, fields=tuple(FIELDS)) -> dict[str, torch.Tensor]:
    """The inverse of concatenating ``fields`` in order along the last dimension:
    (..., sum of their widths) -> field -> (..., width), views of ``row``.
    ``split(drawn_row, DRAWN)`` names a drawn row's values."""
    return dict(zip(fields, torch.split(row, [FIELDS[k] for k in fields], dim=-1)))


def join(p: dict[str, torch.Tensor], fields=tuple(FIELDS)) -> torch.Tensor:
    """``fields`` of ``p`` concatenated in order along the last dimension."""
    return torch.cat([p[k] for k in fields], dim=-1)


def view(params: dict[str, torch.Tensor], b: int, v: int) -> dict[str, torch.Tensor]:
    """The parameters of one view (sample b, view v): field -> (width,)."""
    return {k: t[b, v] for k, t in params.items()}
