"""The run's configuration: one typed, strict dataclass.

Strict: building it from a dict (a ``--config`` JSON file, a run folder's
``config.json``) fails on an unknown key or a value of the wrong type, naming
both; the command line is generated from the same fields, so ``--help`` lists
every option with its default. The resolved config is written to the run
folder with the git sha (trainer/run.py).
"""

from __future__ import annotations

import argparse
import json
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from pipelines import cli


def opt(default, help: str, choices=None):
    return field(default=default, metadata={"help": help, "choices": choices})


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
    size: int = opt(224, "output side of the (large) views, pixels")
    small_size: int = opt(0, "side of multi-crop small views (0: 96/224 of --size)")
    jitter: str = opt("", "colour jitter of every view as B,C,S,H: brightness, contrast and "
                      "saturation factors in [1-x, 1+x], hue shift in [-H, H] turns (H <= "
                      "0.5); empty: the preset's (augself 0.4,0.4,0.4,0.1)")
    recipe: dict | None = opt(None, "your own augmentation recipe on top of --preset (best "
                              "in a --config file): {all: {view settings}, views: [{view "
                              "settings}, ...]}; settings: size, scale, ratio, flip_p, jitter, "
                              "jitter_p, gray_p, blur_p, blur_sigma, solarize_p, rotate (README)")
    workers: int = opt(2, "loader worker processes / threads")
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
    proj_hidden: int = opt(0, "projector hidden width (0: the method's default)")
    proj_dim: int = opt(0, "projector output width (0: the method's default)")
    pred_hidden: int = opt(0, "predictor hidden width (0: the method's default)")
    proj_layers: int = opt(0, "projector layers (0: the method's default)")
    temperature: float = opt(0.0, "contrastive / SwAV temperature (0: the method's default)")
    target_momentum: float = opt(0.0, "MoCo / BYOL target momentum (0: the method's default)")
    queue_size: int = opt(65536, "MoCo queue length")
    prototypes: int = opt(100, "SwAV prototypes")
    freeze_prototypes: int = opt(410, "SwAV: steps during which the prototypes stay frozen")
    barlow_lambda: float = opt(0.0051, "Barlow Twins: weight of the off-diagonal terms")
    vicreg_coeffs: str = opt("25,25,1", "VICReg: invariance, variance and covariance "
                             "coefficients")
    augself_crop: float = opt(1.0, "AugSelf weight of the crop row (0 removes it)")
    augself_color: float = opt(1.0, "AugSelf weight of the colour row (paper: 1 on STL-10, "
                               "0.5 on ImageNet-100)")
    augself_flip: float = opt(0.0, "AugSelf weight of the flip row")
    augself_blur: float = opt(0.0, "AugSelf weight of the blur row")
    augself_gray: float = opt(0.0, "AugSelf weight of the grayscale row")
    augself_solarize: float = opt(0.0, "AugSelf weight of the solarize row")
    augself_rot: float = opt(0.0, "AugSelf weight of the rotation row (quarter turns apart, "
                             "mod 4; the views must rotate: recipe 'rotate: true')")
    essl_weight: float = opt(0.4, "E-SSL rotation loss weight (their CIFAR-10 and ImageNet "
                             "SimCLR setting)")
    essl_views: int = opt(4, "E-SSL: extra views that only the rotation head sees, each its "
                          "own crop; the j-th turned by (t + j) mod 4 quarter turns, t per "
                          "sample, so 4 views take every turn once")
    essl_size: int = opt(0, "E-SSL: side of the extra views (0: half of --size, as E-SSL on "
                         "CIFAR-10)")
    equimod_weight: float = opt(1.0, "EquiMod loss weight")
    equimod_temperature: float = opt(0.2, "EquiMod InfoNCE temperature")
    probe: bool = opt(True, "online linear probe on detached features (needs labels)")
    # optimisation
    epochs: int = opt(100, "epochs (the learning-rate schedule spans them)")
    max_steps: int = opt(0, "stop after this many steps (0: run every epoch); the schedule "
                         "still spans --epochs")
    batch_size: int = opt(256, "global batch size (split over torchrun ranks)")
    lr: float = opt(0.03, "base learning rate at batch 256; used: lr * batch_size / 256")
    optimizer: str = opt("sgd", "optimizer", ["sgd", "lars"])
    weight_decay: float = opt(5e-4, "weight decay")
    momentum: float = opt(0.9, "SGD / LARS momentum")
    warmup_epochs: float = opt(0.0, "linear warm-up before the cosine decay, in epochs")
    # systems
    precision: str = opt("auto", "auto: bf16 autocast on GPU, fp32 on CPU; fp16 adds a "
                         "GradScaler; fp64 runs everything in float64 (slow: a reference "
                         "for numerical checks)", ["auto", "fp32", "bf16", "fp16", "fp64"])
    channels_last: bool = opt(True, "channels_last memory format (faster on GPU and CPU)")
    compile: bool = opt(False, "torch.compile the whole objective (backbone, method heads, "
                        "AugSelf/EquiMod, probe)")
    device: str = opt("auto", "auto: cuda when available (cuda:LOCAL_RANK under torchrun)")
    seed: int = opt(0, "seed for initialisation, data order and augmentations")
    log_every: int = opt(20, "steps between logged lines in metrics.jsonl")
    ckpt_every: int = opt(0, "steps between checkpoints (0: at the end of each epoch)")
    check_finite: bool = opt(True, "skip a step whose loss is not finite (one device-to-host "
                             "read per step; --no-check-finite saves it, and then only "
                             "checkpoints are checked)")
    max_bad_steps: int = opt(10, "stop (non-zero exit, last good checkpoint kept) after this "
                             "many steps in a row with a non-finite loss; each is skipped")
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
                               "parameters) in TensorBoard/W&B; 0: none")

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
    a ValueError naming ``where`` and the key; values are not validated here."""
    known = _types()
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown option(s) {', '.join(unknown)}")
    for k, v in d.items():
        t = known[k]
        ok = isinstance(v, t) and not (t is not bool and isinstance(v, bool))
        if t is float and isinstance(v, int) and not isinstance(v, bool):
            ok, d = True, {**d, k: float(v)}
        if not ok:
            name = getattr(t, "__name__", str(t))
            raise ValueError(f"{where}: {k} must be {name}, got {type(v).__name__} {v!r}")
    return d


def validate(cfg: Config, where: str = "config") -> None:
    for f in fields(Config):
        choices = f.metadata.get("choices")
        if choices and getattr(cfg, f.name) not in choices:
            raise ValueError(f"{where}: {f.name}={getattr(cfg, f.name)!r}, choose one of "
                             f"{', '.join(choices)}")
    if not cfg.data:
        raise ValueError(f"{where}: --data is required (a converted dataset folder)")
    for name in ("epochs", "batch_size", "size", "log_every", "max_bad_steps", "essl_views"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{where}: {name} must be >= 1")
    for name in ("max_steps", "ckpt_every", "workers", "small_size", "warmup_epochs",
                 "view_grid_every", "essl_size"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"{where}: {name} must be >= 0 (0: {_zero_means(name)})")
    if cfg.jitter:
        from pipelines.recipe import parse_jitter
        try:
            parse_jitter(cfg.jitter)
        except ValueError as e:
            raise ValueError(f"{where}: jitter: {e}") from None
    from trainer.models import BACKBONES
    if cfg.backbone not in BACKBONES and not (cfg.backbone.startswith("timm:")
                                              and len(cfg.backbone) > 5):
        raise ValueError(f"{where}: backbone {cfg.backbone!r}: choose one of "
                         f"{', '.join(BACKBONES)} or timm:NAME")
    if cfg.recipe is not None:
        from pipelines.recipe import from_spec, preset
        base = preset(cfg.preset if cfg.preset != "auto" else "augself", max(cfg.size, 8))
        try:
            from_spec(cfg.recipe, base)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
    try:
        coeffs = [float(x) for x in cfg.vicreg_coeffs.split(",")]
    except ValueError:
        coeffs = []
    if len(coeffs) != 3 or min(coeffs) < 0:
        raise ValueError(f"{where}: vicreg_coeffs {cfg.vicreg_coeffs!r}: expected three "
                         "numbers >= 0, e.g. 25,25,1")
    if cfg.size < 8:
        raise ValueError(f"{where}: size {cfg.size} is too small for the backbones' strides; "
                         "use at least 8 (32 for CIFAR-size images)")
    if cfg.lr != cfg.lr or cfg.lr <= 0 or cfg.lr == float("inf"):
        raise ValueError(f"{where}: lr must be a positive finite number, not {cfg.lr}")


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


def _zero_means(name: str) -> str:
    return {"max_steps": "run every epoch", "ckpt_every": "at the end of each epoch",
            "workers": "load in the main process", "small_size": "96/224 of --size",
            "warmup_epochs": "no warm-up", "view_grid_every": "no pictures of the views",
            "essl_size": "half of --size"}[name]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
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
        kw = dict(default=argparse.SUPPRESS, help=f.metadata["help"] +
                  f" (default: {f.default!r})")
        if t is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif f.name == "recipe":
            p.add_argument(flag, type=_json_mapping, metavar="JSON", **kw)
        else:
            p.add_argument(flag, type=t, choices=f.metadata.get("choices"), metavar=t.__name__.upper()
                           if not f.metadata.get("choices") else None, **kw)
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
    """A --config file: YAML (.yaml, .yml) or JSON, a mapping of options."""
    parse, errors = json.loads, (ValueError,)
    if path.suffix in (".yaml", ".yml"):
        import yaml
        parse, errors = yaml.safe_load, (ValueError, yaml.YAMLError)
    try:
        doc = parse(path.read_text())
    except (OSError, UnicodeDecodeError, *errors) as e:
        raise ValueError(f"{path}: cannot read the config ({str(e).splitlines()[0]})") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: a config file holds a mapping of options, not "
                         f"{type(doc).__name__}")
    return doc


def to_dict(cfg: Config) -> dict:
    return asdict(cfg)


assert all(f.default is not MISSING for f in fields(Config))
