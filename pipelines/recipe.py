"""Augmentation recipes as data: one ViewRecipe per view, presets from the papers.

Order of operations is fixed (DESIGN.md): crop -> resize -> flip -> rotate ->
brightness -> contrast -> saturation -> hue -> grayscale -> blur -> solarize ->
normalise. (Rotation by quarter turns commutes with every later step on a square
view, up to the blur's float roundoff; it sits with the geometry.)
torchvision's ColorJitter draws a random order of the four colour ops; we do not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ViewRecipe:
    size: int = 224                       # output side, pixels (square views)
    scale: tuple[float, float] = (0.2, 1.0)   # crop area fraction range
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # crop aspect (w/h) range, log-uniform
    flip_p: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)  # b, c, s strengths; hue
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # in output pixels
    solarize_p: float = 0.0
    rotate: bool = False                  # turned by 0-3 quarter turns (E-SSL's four classes),
                                          # uniformly; False: never turned
    rotate_shift: int = -1                # -1: the view's own draw; 0-3: (t + shift) mod 4 with
                                          # t one draw per sample shared by such views, so four
                                          # views shifted 0-3 take every turn once

    def color_ranges(self) -> list[tuple[float, float]]:
        """torchvision's ranges: factors in [max(0, 1-s), 1+s], hue in [-h, h]."""
        b, c, s, h = self.jitter
        return [(max(0.0, 1 - b), 1 + b), (max(0.0, 1 - c), 1 + c),
                (max(0.0, 1 - s), 1 + s), (-h, h)]


def blur_kernel_size(sigma: float) -> int:
    """Odd window covering +-3 sigma: 2*ceil(3*sigma)+1 (sigma 2 -> 13 pixels)."""
    return 2 * math.ceil(3 * sigma) + 1


@dataclass(frozen=True)
class Recipe:
    name: str
    views: tuple[ViewRecipe, ...]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def num_views(self) -> int:
        return len(self.views)


def _augself(size: int, small: int) -> Recipe:
    # AugSelf (Lee et al. 2021), STL-10 / ImageNet-100 setting.
    v = ViewRecipe(size=size, scale=(0.2, 1.0), jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=0.8,
                   gray_p=0.2, blur_p=0.5, blur_sigma=(0.1, 2.0))
    return Recipe("augself", (v, v))


def _simclr(size: int, small: int) -> Recipe:
    # SimCLR (Chen et al. 2020): strength-1 jitter (0.8, 0.8, 0.8, 0.2), blur p 0.5.
    v = ViewRecipe(size=size, scale=(0.08, 1.0), jitter=(0.8, 0.8, 0.8, 0.2), jitter_p=0.8,
                   gray_p=0.2, blur_p=0.5)
    return Recipe("simclr", (v, v))


def _byol(size: int, small: int) -> Recipe:
    # BYOL (Grill et al. 2020, Table 6): asymmetric blur (1.0 / 0.1) and solarize (0 / 0.2).
    v1 = ViewRecipe(size=size, scale=(0.08, 1.0), jitter=(0.4, 0.4, 0.2, 0.1), jitter_p=0.8,
                    gray_p=0.2, blur_p=1.0, solarize_p=0.0)
    return Recipe("byol", (v1, replace(v1, blur_p=0.1, solarize_p=0.2)))


def _swav(size: int, small: int) -> Recipe:
    # SwAV (Caron et al. 2020) multi-crop: 2 x 224 at (0.14, 1), 6 x 96 at (0.05, 0.14).
    big = ViewRecipe(size=size, scale=(0.14, 1.0), jitter=(0.8, 0.8, 0.8, 0.2), jitter_p=0.8,
                     gray_p=0.2, blur_p=0.5)
    little = replace(big, size=small, scale=(0.05, 0.14))
    return Recipe("swav", (big, big) + (little,) * 6)


PRESETS = {"augself": _augself, "simclr": _simclr, "byol": _byol, "swav": _swav}


def parse_jitter(text: str) -> tuple[float, float, float, float]:
    """'B,C,S,H' -> the four strengths, checked (torchvision's limits)."""
    try:
        vals = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise ValueError(f"{text!r}: expected four numbers B,C,S,H") from None
    if len(vals) != 4 or min(vals) < 0 or vals[3] > 0.5:
        raise ValueError(f"{text!r}: expected four numbers B,C,S,H, each >= 0, H <= 0.5")
    return vals  # type: ignore[return-value]


def with_jitter(recipe: Recipe, jitter: tuple[float, float, float, float]) -> Recipe:
    """The recipe with every view's colour jitter strengths replaced."""
    return replace(recipe, views=tuple(replace(v, jitter=tuple(jitter)) for v in recipe.views))


def with_rotated_views(recipe: Recipe, count: int, size: int) -> Recipe:
    """``recipe`` plus ``count`` views like its first one, at side ``size``, turned:
    E-SSL's rotation views (Dangovski et al. 2022: on CIFAR-10 the first view's
    augmentation at half the side). Their code turns one such view all four
    ways; here each extra view is its own crop, and the j-th one is turned by
    (t + j) mod 4 quarter turns, t uniform per sample (``rotate_shift``): four
    of them take every turn once, as theirs, so every batch holds each class
    equally often (with independent turns the classes' shares wander by a few
    percent a batch, and the rotation head's shared gradient with them: in
    20-step runs here that alone made the head diverge)."""
    if count < 1 or size < 8:
        raise ValueError(f"rotated views: need count >= 1 and size >= 8, got {count}, {size}")
    extra = tuple(replace(recipe.views[0], size=size, rotate=True, rotate_shift=j % 4)
                  for j in range(count))
    return replace(recipe, name=f"{recipe.name}+rot{count}", views=recipe.views + extra)


def preset(name: str, size: int = 224, small_size: int | None = None) -> Recipe:
    """A preset at output side ``size`` (multi-crop small views at ``small_size``,
    default 96/224 of ``size``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    small = small_size or max(8, round(size * 96 / 224))
    return PRESETS[name](size, small)


# Fields of a ViewRecipe a recipe spec may set, with how many numbers each takes.
_VIEW_FIELDS = {"size": 1, "scale": 2, "ratio": 2, "flip_p": 1, "jitter": 4, "jitter_p": 1,
                "gray_p": 1, "blur_p": 1, "blur_sigma": 2, "solarize_p": 1, "rotate": 1,
                "rotate_shift": 1}


def _view_overrides(d: dict, where: str) -> dict:
    if not isinstance(d, dict):
        raise ValueError(f"{where}: expected a mapping of view settings, got {d!r}")
    unknown = sorted(set(d) - set(_VIEW_FIELDS))
    if unknown:
        raise ValueError(f"{where}: unknown view setting(s) {', '.join(unknown)}; known: "
                         f"{', '.join(_VIEW_FIELDS)}")
    out = {}
    for k, v in d.items():
        n = _VIEW_FIELDS[k]
        if k == "rotate":
            if not isinstance(v, bool) and v not in (0, 1):
                raise ValueError(f"{where}: rotate is true or false, got {v!r}")
            out[k] = bool(v)
            continue
        if k == "rotate_shift":
            if isinstance(v, bool) or v not in (-1, 0, 1, 2, 3):
                raise ValueError(f"{where}: rotate_shift is -1 (own draw) or 0-3, got {v!r}")
            out[k] = int(v)
            continue
        vals = v if isinstance(v, (list, tuple)) else [v]
        if len(vals) != n or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                     for x in vals):
            raise ValueError(f"{where}: {k} takes {n} number{'s' if n > 1 else ''}, got {v!r}")
        if k.endswith("_p") and not 0 <= vals[0] <= 1:
            raise ValueError(f"{where}: {k} is a probability in [0, 1], got {vals[0]}")
        if k == "size" and (int(vals[0]) != vals[0] or vals[0] < 8):
            raise ValueError(f"{where}: size must be a whole number of pixels >= 8, got {v}")
        if k in ("scale", "ratio", "blur_sigma") and not 0 < vals[0] <= vals[1]:
            raise ValueError(f"{where}: {k} must be [low, high] with 0 < low <= high, got {v}")
        if k == "jitter":
            parse_jitter(",".join(str(x) for x in vals))
        out[k] = int(vals[0]) if k == "size" else (float(vals[0]) if n == 1
                                                  else tuple(float(x) for x in vals))
    return out


def from_spec(spec: dict, base: Recipe, where: str = "recipe") -> Recipe:
    """A recipe written as data (a config file's ``recipe:``) on top of ``base``:

        all:   {view settings}            applied to every view
        views: [{view settings}, ...]     one per view (their count sets the view
                                          count: a list longer than the base's
                                          repeats its last view)

    View settings are ViewRecipe's fields (size, scale, ratio, flip_p, jitter,
    jitter_p, gray_p, blur_p, blur_sigma, solarize_p, rotate, rotate_shift);
    unknown keys and bad values are errors naming ``where`` and the key."""
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: expected a mapping with 'all' and/or 'views'")
    unknown = sorted(set(spec) - {"all", "views"})
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; use all and/or views")
    views = list(base.views)
    common = _view_overrides(spec.get("all", {}), f"{where}.all")
    views = [replace(v, **common) for v in views]
    per = spec.get("views")
    if per is not None:
        if not isinstance(per, list) or not per:
            raise ValueError(f"{where}.views: expected a non-empty list of view settings")
        views = [replace(views[min(i, len(views) - 1)],
                         **_view_overrides(d, f"{where}.views[{i}]"))
                 for i, d in enumerate(per)]
    return replace(base, name=f"{base.name}+spec", views=tuple(views))


def to_spec(recipe: Recipe) -> dict:
    """Every view of ``recipe`` written out (the run folder's recipe.json)."""
    from dataclasses import asdict
    return {"name": recipe.name, "mean": list(recipe.mean), "std": list(recipe.std),
            "views": [{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(w).items()}
                      for w in recipe.views]}
