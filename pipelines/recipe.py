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

from pipelines.cli import Range, shown

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


def parse_numbers(value, ranges, name: str, expected: str) -> tuple[float, ...]:
    """An option of len(ranges) numbers, each in its range, as a tuple of floats: written
    "a,b,c" (the command line; a config.json written before such options were typed)
    or as a list or tuple of numbers (a JSON or YAML file, a Config built in Python).
    Anything else, a wrong count, or a number that is NaN, infinite or out of its
    range is a ValueError of one line naming ``name``, quoting the value bounded
    (cli.shown: a YAML alias bomb is not expanded) and saying ``expected``."""
    vals = None
    if isinstance(value, str):
        parts = value.split(",")
        if len(parts) == len(ranges):
            try:
                vals = [float(x) for x in parts]
            except ValueError:
                pass
    elif isinstance(value, (list, tuple)) and len(value) == len(ranges):
        vals = list(value)  # checked as they are: a bool or a string is no number here
    if vals is None or not all(r.admits(v) for r, v in zip(ranges, vals)):
        raise ValueError(f"{name}={shown(value, 100)} is out of range: expected {expected}")
    return tuple(float(v) for v in vals)  # admitted, so finite and small: float() is exact


def parse_jitter(value, name: str = "jitter") -> tuple[float, float, float, float]:
    """'B,C,S,H' (or the four numbers as a list or tuple) -> the four strengths, each
    in its range (JITTER). A tuple already parsed passes through unchanged, so a
    caller holding either form gets the typed one."""
    return parse_numbers(value, JITTER, name,  # type: ignore[return-value]
                         f"4 comma-separated numbers {JITTER_TEXT}")


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


# The documented range of every view setting (README, "Bad options"), checked
# before any work; the reasons:
# - size: at least 8 px (the backbones' strides); at most 1024 px, 4.6 times
#   ImageNet's 224 and above any SSL recipe's view: a batch of 256 such views is
#   3 GiB of float32 per view before the backbone sees it, and a side of 100000
#   made DALI fail with bad_alloc and the torchvision loader ask for terabytes.
# - jitter: 0 (none) or at least 0.001 (less moves a pixel by under a quarter of
#   an 8-bit level, and a hue range under ~1e-38 overflows AugSelf's colour code,
#   h / 2H, in float32); brightness, contrast and saturation at most 10 (factors
#   up to 11: every pixel saturates long before); hue at most half a turn
#   (torchvision's limit: +-0.5 covers the circle).
# - blur_sigma: in output pixels, at most 100 (a 601-tap window); a view also
#   needs 3 sigma < its side, since the blur pads by reflection (check_views).
# - ratio: the crop's aspect w/h in [1/10, 10]; scale: a fraction of the area.
MAX_SIZE = 1024
MAX_VIEWS = 16    # views a spec may list (SwAV's multi-crop has 8)
SIZE = Range(8, MAX_SIZE, integer=True)
PROBABILITY = Range(0, 1)
STRENGTH, HUE = Range(0.001, 10, zero="none"), Range(0.001, 0.5, zero="none")
JITTER = (STRENGTH, STRENGTH, STRENGTH, HUE)
JITTER_TEXT = ("B,C,S,H: strengths B, C, S in [0.001, 10] and hue H in [0.001, 0.5], each "
               "or 0 (none)")
SIGMA = Range(0, 100, lo_open=True)
# setting -> (the range of each of its numbers, whether they are a [low, high] pair);
# rotate is true or false
VIEW_SETTINGS: dict[str, tuple[tuple[Range, ...], bool] | None] = {
    "size": ((SIZE,), False), "scale": ((Range(0, 1, lo_open=True),) * 2, True),
    "ratio": ((Range(0.1, 10),) * 2, True), "flip_p": ((PROBABILITY,), False),
    "jitter": (JITTER, False), "jitter_p": ((PROBABILITY,), False),
    "gray_p": ((PROBABILITY,), False), "blur_p": ((PROBABILITY,), False),
    "blur_sigma": ((SIGMA,) * 2, True), "solarize_p": ((PROBABILITY,), False),
    "rotate": None, "rotate_shift": ((Range(-1, 3, integer=True),), False)}


def expected(key: str) -> str:
    """What a view setting takes, as a message says it."""
    if VIEW_SETTINGS[key] is None:
        return "true or false"
    if key == "jitter":
        return f"4 numbers {JITTER_TEXT}"
    ranges, pair = VIEW_SETTINGS[key]
    kind = "a whole number" if ranges[0].integer else "a finite number"
    return f"[low, high] with low <= high, each {kind} in {ranges[0]}" if pair else \
        f"{kind} in {ranges[0]}"


def named(keys, limit: int = 6) -> str:
    """Keys for a message: any type (YAML keys may be numbers), sorted as text, each
    bounded and on one line (a key holding a newline is shown quoted)."""
    keys = sorted(keys, key=lambda k: (type(k).__name__, str(k)))
    shown_keys = [k if isinstance(k, str) and k.isprintable() and len(k) <= 60
                  else shown(k, 60) for k in keys[:limit]]
    more = f" (and {len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(map(str, shown_keys)) + more


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _view_overrides(d: dict, where: str) -> dict:
    """A spec's view settings, each checked against its range; every message names
    ``where`` and the key and quotes the value bounded (a YAML alias bomb must not
    be expanded into the message)."""
    if not isinstance(d, dict):
        raise ValueError(f"{where}: expected a mapping of view settings, got {shown(d, 100)}")
    unknown = [k for k in d if k not in VIEW_SETTINGS]
    if unknown:
        raise ValueError(f"{where}: unknown view setting(s) {named(unknown)}; known: "
                         f"{', '.join(VIEW_SETTINGS)}")
    out = {}
    for k, v in d.items():
        if VIEW_SETTINGS[k] is None:  # rotate
            if not (isinstance(v, bool) or (_number(v) and v in (0, 1))):
                raise ValueError(f"{where}: {k}={shown(v, 100)}: expected true or false")
            out[k] = bool(v)
            continue
        ranges, pair = VIEW_SETTINGS[k]
        n = len(ranges)
        vals = list(v) if isinstance(v, (list, tuple)) else [v]
        if len(vals) != n or not all(_number(x) for x in vals):
            raise ValueError(f"{where}: {k}={shown(v, 100)} is not {n} number"
                             f"{'s' if n > 1 else ''}: expected {expected(k)}")
        if not all(r.admits(x) for r, x in zip(ranges, vals)) or (pair and vals[0] > vals[1]):
            raise ValueError(f"{where}: {k}={shown(v, 100)} is out of range: expected "
                             f"{expected(k)}")
        out[k] = int(vals[0]) if ranges[0].integer else (float(vals[0]) if n == 1
                                                         else tuple(float(x) for x in vals))
    return out


def check_views(recipe: Recipe, where: str = "recipe") -> None:
    """What each view of a whole recipe (preset, spec, --jitter and rotated views
    together) must satisfy beyond its settings' own ranges."""
    for i, v in enumerate(recipe.views):
        if not SIZE.admits(v.size):
            raise ValueError(f"{where}.views[{i}]: size={shown(v.size)} is out of range: "
                             f"expected {expected('size')}")
        reach = math.ceil(3 * v.blur_sigma[1])
        if v.blur_p > 0 and reach >= v.size:
            raise ValueError(f"{where}.views[{i}]: blur_sigma={list(v.blur_sigma)} reaches "
                             f"{reach} px (3 sigma) from each pixel, too far for its {v.size} "
                             f"px view (the blur pads by reflection): expected 3 x high < "
                             "size, or blur_p 0")


def from_spec(spec: dict, base: Recipe, where: str = "recipe") -> Recipe:
    """A recipe written as data (a config file's ``recipe:``) on top of ``base``:

        all:   {view settings}            applied to every view
        views: [{view settings}, ...]     one per view (their count sets the view
                                          count: a list longer than the base's
                                          repeats its last view)

    View settings are ViewRecipe's fields (size, scale, ratio, flip_p, jitter,
    jitter_p, gray_p, blur_p, blur_sigma, solarize_p, rotate, rotate_shift), each
    in its range (VIEW_SETTINGS); unknown keys and bad values are errors naming
    ``where``, the key, the value and the range."""
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: expected a mapping with 'all' and/or 'views', got "
                         f"{shown(spec, 100)}")
    unknown = [k for k in spec if k not in ("all", "views")]
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {named(unknown)}; use all and/or views")
    views = list(base.views)
    common = _view_overrides(spec.get("all", {}), f"{where}.all")
    views = [replace(v, **common) for v in views]
    per = spec.get("views")
    if per is not None:
        if not isinstance(per, list) or not per:
            raise ValueError(f"{where}.views: expected a non-empty list of view settings, "
                             f"got {shown(per, 100)}")
        if len(per) > MAX_VIEWS:
            raise ValueError(f"{where}.views: {len(per)} views, out of range: expected "
                             f"[1, {MAX_VIEWS}] views")
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
