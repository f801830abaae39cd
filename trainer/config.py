"""The run's configuration: one typed, strict dataclass (trainer/options.py), read
here from a dict, a file or the command line and checked.

Strict: building it from a dict (a ``--config`` JSON file, a run folder's
``config.json``) fails on an unknown key, a value of the wrong type or one outside
its documented finite range, naming both; the command line is generated from the
same fields, so ``--help`` lists every option with its default and range. The
resolved config is written to the run folder with the git sha (trainer/run.py).
"""

from __future__ import annotations

import argparse
import json
import typing
from dataclasses import asdict, fields
from pathlib import Path

from pipelines import cli
from pipelines.cli import Range
from pipelines.recipe import check_views, named
from trainer.options import SEED, Config, choices  # noqa: F401 - SEED: for tools/evaluate.py

# Fields a resumed run may change: they do not alter what is computed.
# "out": a run folder may be moved and resumed where it now is.
# "data", "test_data": a dataset may be moved; the run checks it is the same one by
# content (trainer/datasets.py), not by path.
RESUME_MAY_CHANGE = {"resume", "max_steps", "log_every", "workers", "progress", "out",
                     "on_damaged", "max_bad_steps", "tensorboard", "wandb", "view_grid_every",
                     "overwrite", "data", "test_data", "rankme", "knn_bank", "knn_test"}


def _types() -> dict[str, type]:
    return typing.get_type_hints(Config)


def _parsed(name: str) -> bool:
    """A field of several numbers: "a,b,c" or a list, parsed by Config itself."""
    return Config.__dataclass_fields__[name].metadata["parse"] is not None


def typed(d: dict, where: str) -> Config:
    """Config(**d), a field of several numbers parsed into its tuple (the one parse,
    Config.__post_init__), its error naming ``where``."""
    try:
        return Config(**d)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def from_dict(d: dict, where: str = "config") -> Config:
    """Strict: unknown keys and wrong types are errors naming ``where``. A field of
    several numbers may be a list (JSON, YAML) or "a,b,c" (the command line, and
    config.json as runs before typed tuples wrote it): both resume."""
    cfg = typed(checked(d, where), where)
    validate(cfg, where)
    return cfg


def checked(d: dict, where: str) -> dict:
    """``d`` with known keys of the right types (ints accepted as floats), else
    a ValueError naming ``where`` and the key; values are not validated here.
    Keys may be of any type (YAML's may be numbers) and values of any size (a YAML
    alias bomb): messages quote both bounded (cli.shown), never expanded."""
    known = _types()
    unknown = [k for k in d if k not in known]
    if unknown:
        raise ValueError(f"{where}: unknown option(s) {named(unknown)}")
    for k, v in d.items():
        if _parsed(k):  # text or numbers: Config parses and checks them, naming the key
            continue
        t = known[k]
        ok = isinstance(v, t) and not (t is not bool and isinstance(v, bool))
        if t is float and isinstance(v, int) and not isinstance(v, bool):
            ok = True
            try:
                d = {**d, k: float(v)}
            except OverflowError:  # past float's range: kept, for validate() to refuse
                pass
        if not ok:
            name = getattr(t, "__name__", str(t))
            raise ValueError(f"{where}: {k} must be {name}, got {type(v).__name__} "
                             f"{cli.shown(v, 100)}")
    return d


def validate(cfg: Config, where: str = "config") -> None:
    """Every value in its documented range, then what the values say together (the
    recipe the run would train with, built and checked here): a ValueError of one
    line naming ``where``, the key, the value and what is expected."""
    for f in fields(Config):
        names = choices(f)
        if names and getattr(cfg, f.name) not in names:
            raise ValueError(f"{where}: {f.name}={cli.shown(getattr(cfg, f.name), 100)}, choose "
                             f"one of {', '.join(names)}")
    if not cfg.data:
        raise ValueError(f"{where}: --data is required (a converted dataset folder)")
    for f in fields(Config):
        value, rng, parse = getattr(cfg, f.name), f.metadata["range"], f.metadata["parse"]
        if isinstance(rng, Range):
            rng.check(f.name, value, where)
        if parse is not None:  # typed by Config(); again for a value assigned after it
            try:
                parse(value)
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
    from trainer.models import BACKBONES
    if cfg.backbone not in BACKBONES and not (cfg.backbone.startswith("timm:")
                                              and len(cfg.backbone) > 5):
        raise ValueError(f"{where}: backbone {cli.shown(cfg.backbone, 100)}: choose one of "
                         f"{', '.join(BACKBONES)} or timm:NAME")
    _check_together(cfg, where)


def resolve_preset(cfg: Config) -> str:
    """--preset auto: SwAV's multi-crop for --method swav, else AugSelf's. Here, where
    the option is defined, so that the checks and the run resolve it alike."""
    return cfg.preset if cfg.preset != "auto" else ("swav" if cfg.method == "swav" else "augself")


def _check_together(cfg: Config, where: str) -> None:
    """What the values say together; each check names the keys involved. Before
    any work: the run folder is not created for a config refused here."""
    from pipelines.build import LoaderConfig, resolve_recipe
    from trainer.build import rotated_views
    extra, extra_size = rotated_views(cfg)
    try:  # the recipe as the loader will build it (pipelines/build.py)
        recipe = resolve_recipe(LoaderConfig(
            data=cfg.data, preset=resolve_preset(cfg), size=cfg.size,
            small_size=cfg.small_size or None, recipe=cfg.recipe,
            jitter=cfg.jitter,
            rotated_views=extra, rotated_size=extra_size))
        check_views(recipe)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    # Every method compares two views of an image (SwAV: codes of the first two,
    # predicted from every other view); AugSelf, EquiMod and condproj read the first
    # two views' parameters. Supervised needs one (its loss averages over views).
    own = recipe.num_views - extra
    need = 1 if cfg.method == "supervised" and cfg.aux in ("none", "essl") else 2
    if own < need:
        what = f"--method {cfg.method}" + (f" with --aux {cfg.aux}" if cfg.aux != "none" else "")
        raise ValueError(f"{where}: recipe.views: {own} view{'s' if own != 1 else ''}, but "
                         f"{what} compares two views of each image: give at least 2")
    if cfg.aux == "augself":
        weights = cfg.augself_weights()
        if not any(w > 0 for w in weights.values()):
            raise ValueError(f"{where}: augself_* weights: every weight is 0, so --aux augself "
                             "has nothing to predict; give a row a weight > 0 (e.g. "
                             "--augself-crop 1)")
        if weights["rot"] > 0 and not (recipe.views[0].rotate or recipe.views[1].rotate):
            raise ValueError(f"{where}: augself_rot={cli.shown(cfg.augself_rot)} predicts how "
                             "far apart the first two views are turned, but neither turns: "
                             "add rotate: true to them (recipe: {all: {rotate: true}}), or "
                             "set augself_rot 0")
    if cfg.aux == "condproj" and cfg.method == "supervised":
        raise ValueError(f"{where}: aux='condproj' conditions the method's projector, and "
                         "--method supervised has none; choose another --aux or --method")


def check_environment(cfg: Config) -> None:
    """What validate() cannot see from the values alone: the datasets exist and the
    device does. Called before a run starts, not when a saved config is read (a
    finished run's data may have moved since)."""
    where = "config"
    for name in ("data", "test_data"):
        path = getattr(cfg, name)
        if path and path != "-" and not (Path(path) / "manifest.json").is_file():
            raise ValueError(f"{where}: {name} {path}: no manifest.json there; expected a "
                             "folder written by tools/convert_dataset.py")
    if cfg.backbone.startswith("timm:"):
        from trainer.models import check_timm
        check_timm(cfg.backbone.removeprefix("timm:"))
    from trainer.watch import check
    check(cfg.tensorboard, cfg.wandb)
    if cfg.device.startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            raise ValueError(f"{where}: device {cfg.device}, but torch sees no CUDA device "
                             "here; use --device auto or cpu")


class _Parser(argparse.ArgumentParser):
    """argparse's own errors (a value that is not a number, an unknown option) as a
    ValueError: trainer.run prints them as its one line and exits 2, instead of
    forty lines of usage."""

    def error(self, message: str):
        raise ValueError(f"{cli.one_line(message, 300)}; python -m trainer.run --help lists "
                         "every option with its range")


def _range_text(f) -> str:
    rng = f.metadata["range"]
    return f"; range {rng}" if rng is not None else ""


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m trainer.run",
        description="Pretrain a backbone with an SSL method (+ AugSelf or EquiMod) on a "
                    "converted dataset. Single process: python -m trainer.run ...; several: "
                    "torchrun --nproc_per_node=N -m trainer.run ...",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    cli.add_debug(p)
    p.add_argument("--config", help="YAML or JSON file of options (strict; configs/ has the "
                   "papers' recipes); the command line wins")
    for f in fields(Config):
        t = _types()[f.name]
        flag = "--" + f.name.replace("_", "-")
        kw = dict(default=argparse.SUPPRESS, help=f.metadata["help"] + _range_text(f) +
                  f" (default: {f.default!r})")
        if f.name == "resume":  # a flag that also takes "auto" (_resume_auto)
            p.add_argument(flag, nargs="?", const=True, type=_resume_value, metavar="auto",
                           **kw)
            p.add_argument("--no-resume", dest="resume", action="store_false",
                           default=argparse.SUPPRESS, help="start a new run (the default)")
        elif t is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif f.name == "recipe":
            p.add_argument(flag, type=_json_mapping, metavar="JSON", **kw)
        elif _parsed(f.name):  # the text, parsed with the rest of the config (from_dict)
            p.add_argument(flag, type=str, metavar=f.metadata["metavar"], **kw)
        else:
            names = choices(f)
            p.add_argument(flag, type=t, choices=names,
                           metavar=t.__name__.upper() if not names else None, **kw)
    return p


def _resume_value(text: str) -> str:
    if text != "auto":
        raise argparse.ArgumentTypeError(f"{text!r}: --resume takes no value, or auto")
    return text


# The file whose presence makes --resume auto resume: trainer/checkpoint.NAME (not
# imported: reading a config stays torch-free; tests/test_config_registries.py).
CHECKPOINT = "checkpoint.pt"


def _resume_auto(args: dict, base: dict) -> None:
    """--resume auto (a requeued job runs the same command again): resume when
    --out holds this run's checkpoint, else start a new run, which the run-folder
    rules (trainer/run_folder.py) allow only in a missing or empty folder. Decided
    by the checkpoint alone: it appears after every rank has started (the first
    --ckpt-every steps), so the ranks of one job all decide alike."""
    if args.get("resume", base.get("resume")) != "auto":
        return
    out = Path(args.get("out", base.get("out", Config.out)))
    args["resume"] = (out / CHECKPOINT).is_file()


def _json_mapping(text: str) -> dict:
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not JSON ({e})") from None
    if not isinstance(doc, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return doc


def from_argv(argv=None) -> Config:
    """CLI -> Config. With --resume, the run folder's config.json is the base and
    only RESUME_MAY_CHANGE may differ from it."""
    args = vars(parser().parse_args(argv))
    base: dict = {}
    source = "command line"
    if args.get("config"):
        path = Path(args.pop("config"))
        source = f"{path} + command line"
        # keys and types named by the file; values checked once merged below
        base = checked(read_config_file(path), str(path))
    args.pop("config", None)
    _resume_auto(args, base)
    if args.get("resume"):
        out = Path(args.get("out", base.get("out", Config.out)))
        saved_path = out / "config.json"
        if not saved_path.is_file():
            raise ValueError(f"--resume: {saved_path} does not exist; nothing to resume")
        try:
            saved = json.loads(saved_path.read_text())["config"]
            if not isinstance(saved, dict):
                raise TypeError("'config' is not an object")
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"--resume: {saved_path}: not a run's config ({type(e).__name__}: "
                             f"{e}); restore it from the run's copy or start a new run") from None
        given = {**base, **args}
        changed = sorted(k for k, v in given.items() if k not in RESUME_MAY_CHANGE and
                         _as_typed(k, saved.get(k), saved_path) != _as_typed(k, v, source))
        if changed:
            raise ValueError(f"--resume: {', '.join(changed)} differ from {saved_path}; a "
                             f"resumed run keeps its config (may change: "
                             f"{', '.join(sorted(RESUME_MAY_CHANGE))})")
        return from_dict({**saved, **given}, str(saved_path))
    return from_dict({**base, **args}, source)


def _as_typed(key, value, where):
    """A value as the Config holds it, to compare: "25,25,1", [25, 25, 1] and
    (25.0, 25.0, 1.0) are one vicreg_coeffs (a config.json written before such
    fields were typed holds the text)."""
    if value is not None and isinstance(key, str) and key in Config.__dataclass_fields__ \
            and _parsed(key):
        return getattr(typed({key: value}, str(where)), key)
    return value


def read_config_file(path: Path) -> dict:
    """A --config file: YAML (.yaml, .yml, in any case) or JSON, a mapping of options.
    YAML's aliases stay shared (nothing here walks or copies the values), so an alias
    bomb costs its few bytes until a check refuses it with a bounded message."""
    parse, errors = json.loads, (ValueError,)
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml
        parse, errors = _yaml_load, (ValueError, yaml.YAMLError)
    try:
        doc = parse(path.read_text())
    except (OSError, UnicodeDecodeError, *errors) as e:
        raise ValueError(f"{path}: cannot read the config ({str(e).splitlines()[0]})") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: a config file holds a mapping of options, not "
                         f"{type(doc).__name__}")
    return doc


def _yaml_load(text: str):
    """yaml.safe_load, except that 1e-3 and 1.0e9 are numbers (YAML 1.2; PyYAML
    follows YAML 1.1, which reads a number without a dot, or an exponent without a
    sign, as a string: "weight_decay must be float, got str '1e-4'")."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.yaml_implicit_resolvers = {k: list(v) for k, v in
                                      yaml.SafeLoader.yaml_implicit_resolvers.items()}
    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*|\.[0-9_]+|[0-9][0-9_]*)[eE][-+]?[0-9]+$"),
        list("-+0123456789."))
    return yaml.load(text, Loader=Loader)  # noqa: S506 - a SafeLoader


def to_dict(cfg: Config) -> dict:
    """The config as config.json holds it: JSON's types (a tuple of numbers as a
    list), so it equals the dict read back from the file."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}
