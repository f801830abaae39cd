"""The run's configuration: one typed, strict dataclass.

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
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from pipelines import cli
from pipelines.cli import Range
from pipelines.recipe import JITTER_TEXT, SIZE, check_views, named, parse_jitter

# The documented finite range of every numeric option (README, "Bad options"),
# checked by validate() before any work and shown by --help. Upper bounds sit far
# above any published recipe and below what a run could survive; the reasons are
# beside the fields. Steps and epochs: 1e9 steps or 1e5 epochs is years of GPU time.
STEPS = Range(1, 10 ** 9, integer=True)
DEFAULT = "the method's default"
WIDTH = Range(1, 32768, integer=True, zero=DEFAULT)  # 4x the widest projector (8192);
                                                      # 32768^2 floats is a 4 GiB layer
TEMPERATURE = Range(0.01, 10)  # logits / T: a tiny T overflows fp16 (65504 at most), a
                               # huge one makes every logit equal
WEIGHT = Range(0, 100)         # a loss weight
VICREG = Range(0, 1000)        # each of VICReg's three coefficients (theirs: 25, 25, 1)
# The seed: the counter RNG (pipelines/counter_rng.py) keys every draw with its low 32
# bits (seed & 0xFFFFFFFF), so seeds 2**32 apart would draw the same augmentations;
# numpy's default_rng (epoch order) refuses a negative one, and torch.manual_seed takes
# [-2**63, 2**64). [0, 2**32 - 1] is where all three agree and none wraps.
SEED = Range(0, 2 ** 32 - 1, integer=True)


def opt(default, help: str, choices=None, range=None, parse=None):
    """A field: ``range`` (a cli.Range, or for a string of numbers the text that
    describes it) is checked by validate() and shown by --help; ``parse`` checks a
    string of numbers, raising a ValueError that names the key and the value."""
    return field(default=default, metadata={"help": help, "choices": choices, "range": range,
                                            "parse": parse})


def _vicreg_coeffs(text: str) -> tuple[float, float, float]:
    try:
        vals = tuple(float(x) for x in text.split(","))
    except ValueError:
        vals = ()
    if len(vals) != 3 or not all(VICREG.admits(v) for v in vals):
        raise ValueError(f"vicreg_coeffs={cli.shown(text, 100)} is out of range: expected 3 "
                         f"comma-separated numbers, each a finite number in {VICREG}")
    return vals  # type: ignore[return-value]


@dataclass
class Config:
    data: str = opt("", "converted dataset folder (tools/convert_dataset.py output); required")
    test_data: str = opt("", "converted held-out split: kNN and linear accuracy at the end")
    out: str = opt("runs/run", "run folder: config.json, metrics.jsonl, checkpoints, backbone.pt")
    resume: bool = opt(False, "continue the run in --out from its last checkpoint")
    overwrite: bool = opt(False, "replace the run already in --out: its config.json, "
                          "metrics.jsonl, checkpoint, backbone, recipe.json, tb/ and eval/ are "
                          "removed first; other files there are kept (without it a folder "
                          "holding anything is refused)")
    # data
    backend: str = opt("auto", "loader backend (auto: dali-gpu on a GPU, else dali-cpu, "
                       "else ffcv, else torchvision)",
                       ["auto", "dali-gpu", "dali-cpu", "ffcv", "torchvision"])
    preset: str = opt("auto", "augmentation preset (auto: swav's multi-crop for swav, else "
                      "augself's)", ["auto", "augself", "simclr", "byol", "swav"])
    size: int = opt(224, "output side of the (large) views, pixels",
                    range=SIZE)
    small_size: int = opt(0, "side of multi-crop small views (0: 96/224 of --size)",
                          range=Range(8, SIZE.hi, integer=True, zero="96/224 of --size"))
    jitter: str = opt("", "colour jitter of every view as B,C,S,H: brightness, contrast and "
                      "saturation factors in [1-x, 1+x], hue shift in [-H, H] turns (H <= "
                      "0.5); empty: the preset's (augself 0.4,0.4,0.4,0.1)",
                      range=JITTER_TEXT + ", or empty", parse=parse_jitter)
    recipe: dict | None = opt(None, "your own augmentation recipe on top of --preset (best "
                              "in a --config file): {all: {view settings}, views: [{view "
                              "settings}, ...]}; settings: size, scale, ratio, flip_p, jitter, "
                              "jitter_p, gray_p, blur_p, blur_sigma, solarize_p, rotate (README)",
                              range="2 to 16 views (1 for supervised), each setting in its "
                                    "range (README, Bad options)")
    workers: int = opt(2, "loader worker processes / threads",
                       range=Range(0, 256, integer=True))
    # model and method
    method: str = opt("simsiam", "SSL method",
                      ["simsiam", "simclr", "moco", "byol", "swav", "barlow", "vicreg",
                       "supervised"])
    aux: str = opt("none", "auxiliary objective around the method: augself (predict the "
                   "parameters' difference), equimod (equivariant latent), essl (predict "
                   "the four-fold rotation of extra views, E-SSL), condproj (the projector "
                   "is told each view's parameters, after CASSLE)",
                   ["none", "augself", "equimod", "essl", "condproj"])
    backbone: str = opt("resnet18", "backbone: resnet18, resnet50 (torchvision), small (a "
                        "CPU-sized ResNet) or timm:NAME (any timm model, classifier removed; "
                        "e.g. timm:vit_small_patch16_224)")
    stem: str = opt("auto", "ResNet stem (auto: cifar when --size <= 64)",
                    ["auto", "imagenet", "cifar"])
    proj_hidden: int = opt(0, "projector hidden width (0: the method's default)",
                           range=WIDTH)
    proj_dim: int = opt(0, "projector output width (0: the method's default)",
                        range=WIDTH)
    pred_hidden: int = opt(0, "predictor hidden width (0: the method's default)",
                           range=WIDTH)
    proj_layers: int = opt(0, "projector layers (0: the method's default)",
                           range=Range(1, 8, integer=True, zero=DEFAULT))
    temperature: float = opt(0.0, "contrastive / SwAV temperature (0: the method's default)",
                             range=Range(0.01, 10, zero=DEFAULT))
    target_momentum: float = opt(0.0, "MoCo / BYOL target momentum (0: the method's default)",
                                 range=Range(0, 1, lo_open=True, hi_open=True, zero=DEFAULT))
    queue_size: int = opt(65536, "MoCo queue length",
                          range=Range(1, 2 ** 20, integer=True))
    prototypes: int = opt(100, "SwAV prototypes",
                          range=Range(1, 65536, integer=True))
    freeze_prototypes: int = opt(410, "SwAV: steps during which the prototypes stay frozen",
                                 range=Range(0, STEPS.hi, integer=True))
    barlow_lambda: float = opt(0.0051, "Barlow Twins: weight of the off-diagonal terms",
                               range=Range(0, 1))
    vicreg_coeffs: str = opt("25,25,1", "VICReg: invariance, variance and covariance "
                             "coefficients",
                             range=f"3 comma-separated numbers, each in {VICREG}",
                             parse=_vicreg_coeffs)
    augself_crop: float = opt(1.0, "AugSelf weight of the crop row (0 removes it)",
                              range=WEIGHT)
    augself_color: float = opt(1.0, "AugSelf weight of the colour row (paper: 1 on STL-10, "
                               "0.5 on ImageNet-100)",
                               range=WEIGHT)
    augself_flip: float = opt(0.0, "AugSelf weight of the flip row",
                              range=WEIGHT)
    augself_blur: float = opt(0.0, "AugSelf weight of the blur row",
                              range=WEIGHT)
    augself_gray: float = opt(0.0, "AugSelf weight of the grayscale row",
                              range=WEIGHT)
    augself_solarize: float = opt(0.0, "AugSelf weight of the solarize row",
                                  range=WEIGHT)
    augself_rot: float = opt(0.0, "AugSelf weight of the rotation row (quarter turns apart, "
                             "mod 4; the views must rotate: recipe 'rotate: true')",
                             range=WEIGHT)
    essl_weight: float = opt(0.4, "E-SSL rotation loss weight (their CIFAR-10 and ImageNet "
                             "SimCLR setting)",
                             range=WEIGHT)
    essl_views: int = opt(4, "E-SSL: extra views that only the rotation head sees, each its "
                          "own crop; the j-th turned by (t + j) mod 4 quarter turns, t per "
                          "sample, so 4 views take every turn once",
                          range=Range(1, 16, integer=True))
    essl_size: int = opt(0, "E-SSL: side of the extra views (0: half of --size, as E-SSL on "
                         "CIFAR-10)",
                         range=Range(8, SIZE.hi, integer=True, zero="half of --size"))
    equimod_weight: float = opt(1.0, "EquiMod loss weight",
                                range=WEIGHT)
    equimod_temperature: float = opt(0.2, "EquiMod InfoNCE temperature",
                                     range=TEMPERATURE)
    probe: bool = opt(True, "online linear probe on detached features (needs labels)")
    # optimisation
    epochs: int = opt(100, "epochs (the learning-rate schedule spans them)",
                      range=Range(1, 100000, integer=True))
    max_steps: int = opt(0, "stop after this many steps (0: run every epoch); the schedule "
                         "still spans --epochs",
                         range=Range(1, STEPS.hi, integer=True, zero="run every epoch"))
    batch_size: int = opt(256, "global batch size (split over torchrun ranks)",
                          range=Range(2, 65536, integer=True))
    lr: float = opt(0.03, "base learning rate at batch 256; used: lr * batch_size / 256",
                    range=Range(0, 100, lo_open=True))
    optimizer: str = opt("sgd", "optimizer", ["sgd", "lars"])
    weight_decay: float = opt(5e-4, "weight decay",
                              range=Range(0, 1))
    momentum: float = opt(0.9, "SGD / LARS momentum",
                          range=Range(0, 1, hi_open=True))
    warmup_epochs: float = opt(0.0, "linear warm-up before the cosine decay, in epochs",
                               range=Range(0, 100000))
    # systems
    precision: str = opt("auto", "auto: bf16 autocast on GPU, fp32 on CPU; fp16 adds a "
                         "GradScaler; fp64 runs everything in float64 (slow: a reference "
                         "for numerical checks)", ["auto", "fp32", "bf16", "fp16", "fp64"])
    channels_last: bool = opt(True, "channels_last memory format (faster on GPU and CPU)")
    compile: bool = opt(False, "torch.compile the whole objective (backbone, method heads, "
                        "AugSelf/EquiMod, probe)")
    device: str = opt("auto", "auto: cuda when available (cuda:LOCAL_RANK under torchrun)")
    triton_check: bool = opt(True, "on a GPU, render the Triton stage's first batch again with "
                             "the torch stage and switch to the torch stage if they disagree "
                             "(once per loader; --no-triton-check skips it)")
    seed: int = opt(0, "seed for initialisation, data order and augmentations",
                    range=SEED)
    log_every: int = opt(20, "steps between logged lines in metrics.jsonl; the only steps "
                         "at which the host reads the device's counters: skipped steps are "
                         "reported, --max-bad-steps checked and, under torchrun, a "
                         "SIGTERM/SIGINT acted on there (1: every step)",
                         range=STEPS)
    ckpt_every: int = opt(0, "steps between checkpoints (0: at the end of each epoch)",
                          range=Range(1, STEPS.hi, integer=True, zero="at the end of each epoch"))
    check_finite: bool = opt(True, "skip a step whose loss is not finite, decided on the "
                             "device (no host read per step; a copy of the BN statistics and "
                             "a select per state; --no-check-finite saves those, and then "
                             "only checkpoints are checked)")
    max_bad_steps: int = opt(10, "stop (non-zero exit, last good checkpoint kept) after this "
                             "many steps in a row with a non-finite loss; each is skipped. "
                             "Checked at logged lines: the run stops at the first one at or "
                             "after the limit (--log-every)",
                             range=Range(1, 10 ** 6, integer=True))
    on_damaged: str = opt("skip", "a sample whose bytes fail the converter's checksum: skip "
                          "(its batch slot repeats a good sample; named on stderr, counted "
                          "in metrics.jsonl as damaged_samples) or stop (exit 1, naming it)",
                          ["skip", "stop"])
    progress: bool = opt(True, "progress bar")
    tensorboard: bool = opt(True, "TensorBoard event files in RUN/tb (the metrics.jsonl "
                            "quantities, and a picture of views with their parameters)")
    wandb: str = opt("off", "Weights & Biases logging (needs the wandb package); offline "
                     "writes RUN/wandb without a network", ["off", "offline", "online"])
    view_grid_every: int = opt(5, "epochs between pictures of the views (with their "
                               "parameters) in TensorBoard/W&B; 0: none",
                               range=Range(1, 100000, integer=True, zero="no pictures"))

    def augself_weights(self) -> dict[str, float]:
        return {k.removeprefix("augself_"): getattr(self, k) for k in self.__dataclass_fields__
                if k.startswith("augself_")}


# Fields a resumed run may change: they do not alter what is computed.
# "out": a run folder may be moved and resumed where it now is.
# "data", "test_data": a dataset may be moved; the run checks it is the same one by
# content (trainer/datasets.py), not by path.
RESUME_MAY_CHANGE = {"resume", "max_steps", "log_every", "workers", "progress", "out",
                     "on_damaged", "max_bad_steps", "tensorboard", "wandb", "view_grid_every",
                     "overwrite", "data", "test_data"}


def _types() -> dict[str, type]:
    return typing.get_type_hints(Config)


def from_dict(d: dict, where: str = "config") -> Config:
    """Strict: unknown keys and wrong types are errors naming ``where``."""
    cfg = Config(**checked(d, where))
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
        choices = f.metadata.get("choices")
        if choices and getattr(cfg, f.name) not in choices:
            raise ValueError(f"{where}: {f.name}={cli.shown(getattr(cfg, f.name), 100)}, choose "
                             f"one of {', '.join(choices)}")
    if not cfg.data:
        raise ValueError(f"{where}: --data is required (a converted dataset folder)")
    for f in fields(Config):
        value, rng, parse = getattr(cfg, f.name), f.metadata["range"], f.metadata["parse"]
        if isinstance(rng, Range):
            rng.check(f.name, value, where)
        if parse is not None and value != "":
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
            jitter=parse_jitter(cfg.jitter) if cfg.jitter else None,
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
        if t is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif f.name == "recipe":
            p.add_argument(flag, type=_json_mapping, metavar="JSON", **kw)
        else:
            p.add_argument(flag, type=t, choices=f.metadata.get("choices"),
                           metavar=t.__name__.upper() if not f.metadata.get("choices") else None,
                           **kw)
    return p


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
        changed = sorted(k for k, v in given.items()
                         if k not in RESUME_MAY_CHANGE and saved.get(k) != v)
        if changed:
            raise ValueError(f"--resume: {', '.join(changed)} differ from {saved_path}; a "
                             f"resumed run keeps its config (may change: "
                             f"{', '.join(sorted(RESUME_MAY_CHANGE))})")
        return from_dict({**saved, **given}, str(saved_path))
    return from_dict({**base, **args}, source)


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
    return asdict(cfg)


assert all(f.default is not MISSING for f in fields(Config))
