"""The whole configuration surface, property-based (hypothesis): random options
(every numeric field, methods, auxiliary objectives) and random recipes (``all``
and 0-4 ``views`` with random settings), each value in or out of its documented
range (NaN, infinities, huge, negative, wrong types), passed on the command line
or in a --config JSON file.

The property: a config is refused by ``from_argv`` with a ValueError of one line
that names one of the keys that are actually bad, or, when nothing is bad, it is
accepted; and an accepted config trains (2 steps on CPU, finite losses, exit 0).

What is bad is decided here by an oracle written independently of
trainer/config.py and pipelines/recipe.py (the ranges README.md documents, typed
out again), so a range mistyped in either place is a failing example."""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from trainer.config import Config, from_argv  # noqa: E402

INF, NAN = float("inf"), float("nan")

# field -> (type, lo, hi, lo_open, hi_open, 0 also admitted as "the default")
OPTIONS = {
    "size": (int, 8, 1024, False, False, False),
    "small_size": (int, 8, 1024, False, False, True),
    "essl_size": (int, 8, 1024, False, False, True),
    "workers": (int, 0, 256, False, False, False),
    "proj_hidden": (int, 1, 32768, False, False, True),
    "proj_dim": (int, 1, 32768, False, False, True),
    "pred_hidden": (int, 1, 32768, False, False, True),
    "proj_layers": (int, 1, 8, False, False, True),
    "temperature": (float, 0.01, 10, False, False, True),
    "target_momentum": (float, 0, 1, True, True, True),
    "queue_size": (int, 1, 2 ** 20, False, False, False),
    "prototypes": (int, 1, 65536, False, False, False),
    "freeze_prototypes": (int, 0, 10 ** 9, False, False, False),
    "barlow_lambda": (float, 0, 1, False, False, False),
    "augself_crop": (float, 0, 100, False, False, False),
    "augself_color": (float, 0, 100, False, False, False),
    "augself_flip": (float, 0, 100, False, False, False),
    "augself_blur": (float, 0, 100, False, False, False),
    "augself_gray": (float, 0, 100, False, False, False),
    "augself_solarize": (float, 0, 100, False, False, False),
    "augself_rot": (float, 0, 100, False, False, False),
    "essl_weight": (float, 0, 100, False, False, False),
    "essl_views": (int, 1, 16, False, False, False),
    "equimod_weight": (float, 0, 100, False, False, False),
    "equimod_temperature": (float, 0.01, 10, False, False, False),
    "epochs": (int, 1, 100000, False, False, False),
    "max_steps": (int, 1, 10 ** 9, False, False, True),
    "batch_size": (int, 2, 65536, False, False, False),
    "lr": (float, 0, 100, True, False, False),
    "weight_decay": (float, 0, 1, False, False, False),
    "momentum": (float, 0, 1, False, True, False),
    "warmup_epochs": (float, 0, 100000, False, False, False),
    "seed": (int, 0, 2 ** 32 - 1, False, False, False),
    "log_every": (int, 1, 10 ** 9, False, False, False),
    "ckpt_every": (int, 1, 10 ** 9, False, False, True),
    "max_bad_steps": (int, 1, 10 ** 6, False, False, False),
    "view_grid_every": (int, 1, 100000, False, False, True),
}
METHODS = ["simsiam", "simclr", "moco", "byol", "swav", "barlow", "vicreg", "supervised"]
AUXES = ["none", "augself", "equimod", "essl", "condproj"]
PRESETS = ["auto", "augself", "simclr", "byol", "swav"]
# recipe setting -> (numbers, each one's (lo, hi, lo_open, 0 also admitted), ordered
# pair, whole numbers)
JITTER = [(0.001, 10, False, True)] * 3 + [(0.001, 0.5, False, True)]
SETTINGS = {
    "size": (1, [(8, 1024, False, False)], False, True),
    "scale": (2, [(0, 1, True, False)] * 2, True, False),
    "ratio": (2, [(0.1, 10, False, False)] * 2, True, False),
    "flip_p": (1, [(0, 1, False, False)], False, False),
    "jitter": (4, JITTER, False, False),
    "jitter_p": (1, [(0, 1, False, False)], False, False),
    "gray_p": (1, [(0, 1, False, False)], False, False),
    "blur_p": (1, [(0, 1, False, False)], False, False),
    "blur_sigma": (2, [(0, 100, True, False)] * 2, True, False),
    "solarize_p": (1, [(0, 1, False, False)], False, False),
    "rotate_shift": (1, [(-1, 3, False, False)], False, True),
}


# ---- the oracle -------------------------------------------------------------

def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _in(v, lo, hi, lo_open, hi_open) -> bool:
    if not _number(v) or (isinstance(v, float) and not math.isfinite(v)):
        return False
    return (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)


def option_ok(name: str, value, path: str) -> bool:
    """Whether the option's value is good, as it arrives by ``path`` ("cli": the
    text argparse parses; "json": the value a --config file holds)."""
    t, lo, hi, lo_open, hi_open, zero = OPTIONS[name]
    if path == "cli":
        try:
            value = t(_cli_text(value))
        except (ValueError, OverflowError):
            return False
    elif isinstance(value, bool) or not (isinstance(value, int) if t is int else _number(value)):
        return False
    if t is int and value != int(value):
        return False
    return (zero and value == 0) or _in(value, lo, hi, lo_open, hi_open)


def _each_in(vals, ranges) -> bool:
    return all((zero and v == 0) or _in(v, lo, hi, lo_open, False)
               for v, (lo, hi, lo_open, zero) in zip(vals, ranges))


def _numbers_ok(text, ranges) -> bool:
    if not isinstance(text, str):
        return False
    try:
        vals = [float(x) for x in text.split(",")]
    except ValueError:
        return False
    return len(vals) == len(ranges) and _each_in(vals, ranges)


def string_ok(name: str, value) -> bool:
    if name == "jitter":
        return value == "" or _numbers_ok(value, JITTER)
    return _numbers_ok(value, [(0, 1000, False, False)] * 3)  # vicreg_coeffs


def setting_ok(key: str, value) -> bool:
    if key == "rotate":
        return isinstance(value, bool) or (_number(value) and value in (0, 1))
    n, ranges, ordered, whole = SETTINGS[key]
    vals = value if isinstance(value, list) else [value]
    if len(vals) != n or not all(_number(x) for x in vals):
        return False
    if whole and any(x != int(x) for x in vals if math.isfinite(x)):
        return False
    if not _each_in(vals, ranges):
        return False
    return not ordered or vals[0] <= vals[1]


def _views_of(opts: dict, recipe) -> list[dict]:
    """size, blur_p, blur_sigma high and rotate of every view the run would have
    (the preset, then the recipe, then E-SSL's rotated views)."""
    method = opts.get("method", "simsiam")
    preset = opts.get("preset", "auto")
    preset = preset if preset != "auto" else ("swav" if method == "swav" else "augself")
    size = opts.get("size", 224)
    small = opts.get("small_size", 0) or max(8, round(size * 96 / 224))
    if preset == "swav":
        base = [{"size": size}] * 2 + [{"size": small}] * 6
    else:
        base = [{"size": size}] * 2
    base = [{**v, "blur_p": 0.5, "blur_hi": 2.0, "rotate": False} for v in base]
    recipe = recipe or {}
    common = _overrides(recipe.get("all", {}))
    views = [{**v, **common} for v in base]
    if "views" in recipe:
        views = [{**views[min(i, len(views) - 1)], **_overrides(d)}
                 for i, d in enumerate(recipe["views"])]
    if opts.get("aux") == "essl":
        side = opts.get("essl_size", 0) or max(8, size // 2)
        views += [{**views[0], "size": side, "rotate": True}] * opts.get("essl_views", 4)
    return views


def _overrides(d: dict) -> dict:
    # a one-number setting may be written as a one-element list (recipe.from_spec)
    out = {k: (d[k][0] if isinstance(d[k], (list, tuple)) else d[k])
           for k in ("size", "blur_p", "rotate") if k in d}
    if "blur_sigma" in d:
        out["blur_hi"] = d["blur_sigma"][1]
    if "rotate" in out:
        out["rotate"] = bool(out["rotate"])
    return out


def bad_keys(opts: dict, paths: dict, recipe) -> set[str]:
    """The keys a refusal may name; empty: the config must be accepted."""
    bad = set()
    for name, value in opts.items():
        if name in OPTIONS:
            if not option_ok(name, value, paths[name]):
                bad.add(name)
        elif name in ("jitter", "vicreg_coeffs"):
            if not string_ok(name, value):
                bad.add(name)
    if recipe is not None:
        if not isinstance(recipe, dict):
            return bad | {"recipe"}
        for k in set(recipe) - {"all", "views"}:
            bad.add(k)
        parts = [("all", recipe.get("all", {}))]
        if "views" in recipe:
            if not isinstance(recipe["views"], list) or not recipe["views"]:
                bad.add("views")
            else:
                parts += [("views", d) for d in recipe["views"]]
        for where, d in parts:
            if not isinstance(d, dict):
                bad.add(where)
                continue
            for k, v in d.items():
                if k not in SETTINGS and k != "rotate":
                    bad.add(k)
                elif not setting_ok(k, v):
                    bad.add(k)
    if bad:
        return bad
    # every value is in range: what the values say together
    views = _views_of(opts, recipe)
    method, aux = opts.get("method", "simsiam"), opts.get("aux", "none")
    own = len(views) - (opts.get("essl_views", 4) if aux == "essl" else 0)
    if own < (1 if method == "supervised" and aux in ("none", "essl") else 2):
        bad.add("views")
    for v in views:
        if v["blur_p"] > 0 and math.ceil(3 * v["blur_hi"]) >= v["size"]:
            bad.add("blur_sigma")
    if aux == "augself":
        weights = {k: opts.get(f"augself_{k}", Config.__dataclass_fields__[f"augself_{k}"].default)
                   for k in ("crop", "color", "flip", "blur", "gray", "solarize", "rot")}
        if not any(w > 0 for w in weights.values()):
            bad.add("augself")
        if weights["rot"] > 0 and not (views[0]["rotate"] or views[1]["rotate"]):
            bad.add("augself_rot")
    if aux == "condproj" and method == "supervised":
        bad.add("condproj")
    return bad


# ---- the generator ----------------------------------------------------------

def _cli_text(value) -> str:
    return repr(value) if isinstance(value, float) else str(value)


HOSTILE = st.sampled_from([NAN, INF, -INF, -1, -1.5, 0, 0.0, 1e-300, 1e300, 10 ** 30,
                           2 ** 32, 2 ** 63, True, "3", "x", None, [1, 2], {"a": 1}])


def _good_option(name: str, train: bool):
    t, lo, hi, lo_open, hi_open, zero = OPTIONS[name]
    if train and name in TRAIN:
        return TRAIN[name]
    if t is int:
        s = st.integers(lo, hi)
    else:
        s = st.floats(lo, hi, exclude_min=lo_open, exclude_max=hi_open)
    return st.one_of(s, st.just(0)) if zero else s


def _good_setting(key: str, train: bool):
    if key == "rotate":
        return st.booleans()
    if train and key == "size":
        return st.integers(16, 32)
    if train and key == "blur_sigma":
        return st.lists(st.floats(0.1, 5), min_size=2, max_size=2).map(sorted)
    n, ranges, ordered, whole = SETTINGS[key]
    parts = [st.integers(int(lo), int(hi)) if whole else
             st.one_of(st.floats(lo, hi, exclude_min=lo_open), st.just(0.0)) if zero else
             st.floats(lo, hi, exclude_min=lo_open) for lo, hi, lo_open, zero in ranges]
    s = st.tuples(*parts).map(list)
    if ordered:
        s = s.map(sorted)
    return s.map(lambda v: v[0]) if n == 1 else s


def _bad_setting(key: str):
    if key == "rotate":
        return st.sampled_from([2, -1, "yes", NAN, [True]])
    n = SETTINGS[key][0]
    one = st.one_of(HOSTILE, st.floats(allow_nan=True, allow_infinity=True))
    return st.one_of(one, st.lists(one, min_size=n, max_size=n),
                     st.lists(st.floats(0, 1), min_size=0, max_size=n + 2))


@st.composite
def configs(draw, hostile: bool, train: bool = False):
    """(options, the path each takes, recipe or None)."""
    opts: dict = {"method": draw(st.sampled_from(METHODS)), "aux": draw(st.sampled_from(AUXES))}
    if draw(st.booleans()):
        opts["preset"] = draw(st.sampled_from(PRESETS))
    names = sorted(OPTIONS) if not train else sorted(TRAIN)
    for name in draw(st.lists(st.sampled_from(names), unique=True, max_size=12)):
        bad = hostile and draw(st.integers(0, 5)) == 0
        opts[name] = draw(HOSTILE if bad else _good_option(name, train))
    for name, good in (("jitter", st.sampled_from(["", "0.4,0.4,0.4,0.1", "0,10,0.5,0.5",
                                                   "1,1,1,0", "0.001,0,0,0.001"])),
                       ("vicreg_coeffs", st.sampled_from(["25,25,1", "0,1000,0.5"]))):
        if draw(st.integers(0, 3)) == 0:
            bad = hostile and draw(st.booleans())
            opts[name] = draw(st.sampled_from(["nan,0,0,0", "1,2,3", "inf,1,1", "a,b,c,d",
                                               "-1,0,0,0", "0,0,0,0.6", "0,0,0,1e-39", 3])
                              if bad else good)
    recipe = None
    if draw(st.booleans()):
        recipe = {}
        for part in ("all", "views"):
            if not draw(st.booleans()):
                continue
            n = draw(st.integers(0 if hostile else 1, 4)) if part == "views" else 1
            ds = []
            for _ in range(n):
                d = {}
                for key in draw(st.lists(st.sampled_from([*SETTINGS, "rotate"]), unique=True,
                                         max_size=4)):
                    bad = hostile and draw(st.integers(0, 4)) == 0
                    d[key] = draw(_bad_setting(key) if bad else _good_setting(key, train))
                ds.append(d)
            recipe[part] = ds[0] if part == "all" else ds
        if hostile and draw(st.integers(0, 19)) == 0:
            recipe = draw(st.sampled_from([[1], "x", {"viewz": []}, {"all": [1]},
                                           {"views": 3}]))
    paths = {name: draw(st.sampled_from(["cli", "json"])) for name in opts}
    if train:  # the command line types them; a JSON file must hold the right types
        paths = {name: "cli" for name in opts}
    return opts, paths, recipe


def _argv(opts: dict, paths: dict, recipe, folder: Path) -> list[str]:
    argv, doc = [], {}
    for name, value in opts.items():
        if paths[name] == "json":
            doc[name] = value
        else:
            argv += ["--" + name.replace("_", "-"), _cli_text(value)]
    if recipe is not None:
        doc["recipe"] = recipe
    if doc:
        (folder / "c.json").write_text(json.dumps(doc))
        argv += ["--config", str(folder / "c.json")]
    return argv


def _check_refusal(e: ValueError, bad: set[str], out: Path) -> None:
    msg = str(e)
    assert "\n" not in msg and len(msg) <= 300 + len(str(out)), msg
    names = {k for k in bad} | {"--" + k.replace("_", "-") for k in bad}
    assert any(str(k) in msg for k in names), (msg, bad)
    assert not out.exists()


# ---- (a) the contract of from_argv, many examples ---------------------------

@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(configs(hostile=True))
def test_every_config_is_accepted_or_refused_naming_a_bad_key(case):
    opts, paths, recipe = case
    bad = bad_keys(opts, paths, recipe)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        argv = ["--data", "x", "--out", str(out), *_argv(opts, paths, recipe, Path(tmp))]
        try:
            from_argv(argv)
        except ValueError as e:
            assert bad, f"refused a config the documented ranges admit: {e}"
            _check_refusal(e, bad, out)
            event("refused")
        else:
            assert not bad, f"accepted, though {sorted(map(str, bad))} are out of range"
            event("accepted")


# ---- (b) accepted configs train ---------------------------------------------

# training-sized values (the ranges above, narrowed so that 2 CPU steps are quick
# and a sane learning rate keeps the second step finite)
TRAIN = {
    "proj_hidden": st.sampled_from([16, 32]), "proj_dim": st.sampled_from([16, 32]),
    "pred_hidden": st.sampled_from([8, 16]), "proj_layers": st.integers(0, 3),
    "temperature": st.one_of(st.just(0.0), st.floats(0.05, 1)),
    "target_momentum": st.one_of(st.just(0.0), st.floats(0.5, 0.999)),
    "queue_size": st.integers(1, 64), "prototypes": st.integers(1, 32),
    "freeze_prototypes": st.integers(0, 3), "barlow_lambda": st.floats(0, 0.05),
    "augself_crop": st.floats(0, 2), "augself_color": st.floats(0, 2),
    "augself_flip": st.floats(0, 2), "augself_rot": st.floats(0, 2),
    "augself_blur": st.floats(0, 2), "augself_gray": st.floats(0, 2),
    "augself_solarize": st.floats(0, 2), "ckpt_every": st.integers(0, 3),
    "essl_weight": st.floats(0, 1), "essl_views": st.integers(1, 4),
    "essl_size": st.one_of(st.just(0), st.integers(8, 16)),
    "small_size": st.one_of(st.just(0), st.integers(8, 16)),
    "equimod_weight": st.floats(0, 2), "equimod_temperature": st.floats(0.05, 1),
    "lr": st.floats(1e-3, 0.3), "weight_decay": st.floats(0, 1e-3),
    "momentum": st.floats(0, 0.99), "warmup_epochs": st.floats(0, 2),
    "seed": st.sampled_from([0, 1, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1]),
}
FIXED = ["--backbone", "small", "--backend", "torchvision", "--workers", "0", "--device", "cpu",
         "--epochs", "1", "--max-steps", "2", "--log-every", "1", "--no-progress",
         "--no-tensorboard"]


@settings(max_examples=8, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.data_too_large])
@given(case=configs(hostile=False, train=True), size=st.integers(16, 32),
       batch=st.integers(8, 16))
# Always tried first: what the landed code accepted and then failed on after creating
# the run folder ("list index out of range"; a blur reaching 15 px in SwAV's 12 px
# views: "Padding size should be less than the corresponding input dimension").
@example(case=({"method": "simclr", "aux": "none"}, {"method": "cli", "aux": "cli"},
               {"views": [{}]}), size=16, batch=8)
@example(case=({"method": "swav", "aux": "none", "freeze_prototypes": 0},
               {"method": "cli", "aux": "cli", "freeze_prototypes": "cli"},
               {"all": {"blur_sigma": [1, 5]}}), size=28, batch=8)
def test_an_accepted_config_trains_two_steps_with_finite_losses(tiny_dataset, case, size, batch):
    from trainer import run

    opts, paths, recipe = case
    opts = {**opts, "size": size, "batch_size": batch}
    paths = {**paths, "size": "cli", "batch_size": "cli"}
    bad = bad_keys(opts, paths, recipe)
    tmp = Path(tempfile.mkdtemp())
    try:
        out = tmp / "run"
        argv = ["--data", str(tiny_dataset), "--out", str(out), *FIXED,
                *_argv(opts, paths, recipe, tmp)]
        try:
            from_argv(argv)
        except ValueError as e:
            assert bad, f"refused a config the documented ranges admit: {e}"
            _check_refusal(e, bad, out)
            event("refused")
            return
        assert not bad, f"accepted, though {sorted(bad)} are out of range"
        event("trained")
        assert run.main(argv) == 0, argv
        rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
        losses = [r["loss"] for r in rows if "loss" in r]
        assert len(losses) == 2 and all(math.isfinite(x) for x in losses), (rows, argv)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_swav_trains_past_its_frozen_prototypes(tiny_dataset, tmp_path):
    """Found by the property test above. Fused SGD keeps one "first step" flag per
    parameter group: the prototypes get their first gradient only after
    --freeze-prototypes steps, when every other parameter of their group already
    has a momentum buffer, and the step fails with a TypeError (at step 411 of a
    default SwAV run)."""
    from trainer import run

    out = tmp_path / "run"
    assert run.main(["--data", str(tiny_dataset), "--out", str(out), *FIXED, "--method", "swav",
                     "--freeze-prototypes", "1", "--size", "16", "--batch-size", "8"]) == 0
