"""The run's options: one typed dataclass, each field with its default, its help,
its choices (the keys of the registry that builds it) and its documented finite
range. Reading a Config from a dict, a file or the command line, strictly, and
checking it is trainer/config.py; the command line is generated from these fields.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import MISSING, dataclass, field, fields

from pipelines.cli import Range
from pipelines.recipe import JITTER_TEXT, SIZE, parse_jitter, parse_numbers

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


def opt(default, help: str, choices=None, range=None, parse=None, metavar=None):
    """A field: ``choices`` (a tuple, or a Registry: the keys of a table) are checked
    by validate() and offered by --help; ``range`` (a cli.Range, or for a field of
    several numbers the text that describes it) is checked by validate() and shown
    by --help; ``parse`` turns what a user writes (for several numbers:
    "a,b,c" or a list) into the field's typed value, checked, or raises a ValueError
    of one line naming the key and the value (Config.__post_init__)."""
    return field(default=default, metadata={"help": help, "choices": choices, "range": range,
                                            "parse": parse, "metavar": metavar})


class Registry(Sequence):
    """The choices of an option: the keys of the registry ``module.table`` (``extra``,
    e.g. "auto", first), so adding a method, a backend, a preset or an auxiliary
    objective to its table makes it a choice, with nothing to copy here. A sequence
    read on each use (argparse's choices, validate(), iterating), not when this
    module is imported: trainer.methods and trainer.build import torch (seconds),
    which a tool that only reads a saved config does not need."""

    def __init__(self, module: str, table: str, *extra: str):
        self.module, self.table, self.extra = module, table, extra

    def names(self) -> tuple[str, ...]:
        return (*self.extra, *getattr(importlib.import_module(self.module), self.table))

    def __getitem__(self, i):
        return self.names()[i]

    def __len__(self) -> int:
        return len(self.names())

    def __iter__(self):
        return iter(self.names())

    def __contains__(self, name) -> bool:
        return name in self.names()

    def __repr__(self) -> str:
        return f"Registry({self.module}.{self.table}: {', '.join(self.names())})"


def choices(f) -> tuple[str, ...] | None:
    """The choices of Config field ``f`` as they are now; None: any value."""
    c = f.metadata.get("choices")
    return tuple(c) if c else None


def _jitter(value) -> tuple[float, float, float, float] | None:
    return None if value in ("", None) else parse_jitter(value)


def _vicreg_coeffs(value) -> tuple[float, float, float]:
    return parse_numbers(value, (VICREG,) * 3, "vicreg_coeffs",  # type: ignore[return-value]
                         f"3 comma-separated numbers, each a finite number in {VICREG}")


@dataclass
class Config:
    data: str = opt("", "converted dataset folder (tools/convert_dataset.py output); required")
    test_data: str = opt("", "converted held-out split: kNN and linear accuracy at the end")
    out: str = opt("runs/run", "run folder: config.json, metrics.jsonl, checkpoints, backbone.pt")
    resume: bool = opt(False, "continue the run in --out from its last checkpoint; --resume "
                              "auto: resume if --out holds a checkpoint, else start a new run "
                              "(for a requeued job: the same command every time)")
    overwrite: bool = opt(False, "replace the run already in --out: its config.json, "
                          "metrics.jsonl, checkpoint, backbone, recipe.json, tb/ and eval/ are "
                          "removed first; other files there are kept (without it a folder "
                          "holding anything is refused)")
    # data
    backend: str = opt("auto", "loader backend (auto: dali-gpu on a GPU, else dali-cpu, "
                       "else ffcv, else torchvision)",
                       Registry("pipelines.build", "BACKENDS", "auto"))
    preset: str = opt("auto", "augmentation preset (auto: swav's multi-crop for swav, else "
                      "augself's)", Registry("pipelines.recipe", "PRESETS", "auto"))
    size: int = opt(224, "output side of the (large) views, pixels",
                    range=SIZE)
    small_size: int = opt(0, "side of multi-crop small views (0: 96/224 of --size)",
                          range=Range(8, SIZE.hi, integer=True, zero="96/224 of --size"))
    # Several numbers: "B,C,S,H" on the command line, a list in a JSON/YAML file (or the
    # text, as config.json held it before), a tuple once parsed (Config.__post_init__)
    jitter: tuple[float, float, float, float] | None = opt(
        None, "colour jitter of every view as B,C,S,H: brightness, contrast and "
        "saturation factors in [1-x, 1+x], hue shift in [-H, H] turns (H <= 0.5); "
        "empty: the preset's (augself 0.4,0.4,0.4,0.1)",
        range=JITTER_TEXT + ", or empty", parse=_jitter, metavar="B,C,S,H")
    recipe: dict | None = opt(None, "your own augmentation recipe on top of --preset (best "
                              "in a --config file): {all: {view settings}, views: [{view "
                              "settings}, ...]}; settings: size, scale, ratio, flip_p, jitter, "
                              "jitter_p, gray_p, blur_p, blur_sigma, solarize_p, rotate (README)",
                              range="2 to 16 views (1 for supervised), each setting in its "
                                    "range (README, Bad options)")
    workers: int = opt(2, "loader worker processes / threads",
                       range=Range(0, 256, integer=True))
    # model and method
    method: str = opt("simsiam", "SSL method", Registry("trainer.methods", "METHODS"))
    aux: str = opt("none", "auxiliary objective around the method: augself (predict the "
                   "parameters' difference), equimod (equivariant latent), essl (predict "
                   "the four-fold rotation of extra views, E-SSL), condproj (the projector "
                   "is told each view's parameters, after CASSLE)",
                   Registry("trainer.build", "AUX"))
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
    vicreg_coeffs: tuple[float, float, float] = opt(
        (25.0, 25.0, 1.0), "VICReg: invariance, variance and covariance coefficients",
        range=f"3 comma-separated numbers, each in {VICREG}", parse=_vicreg_coeffs,
        metavar="I,V,C")
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
    # monitors (trainer/monitors.py, trainer/online_knn.py; README, "Is SSL working?")
    rankme: bool = opt(True, "RankMe (the effective rank of the logged step's backbone "
                       "features) in every metrics line; --no-rankme: none")
    knn_bank: int = opt(2048, "online kNN at each epoch end with --test-data: train images "
                        "in its bank (un-augmented, drawn once; all when the split has "
                        "fewer); 0: no online kNN",
                        range=Range(1, 2 ** 17, integer=True, zero="no online kNN"))
    knn_test: int = opt(512, "online kNN: test images it scores (0: no online kNN); bank + "
                        "test forward passes an epoch, ~(bank + test) / (6 x train images) "
                        "of its time with 2 views",
                        range=Range(1, 2 ** 17, integer=True, zero="no online kNN"))

    def __post_init__(self):
        # The one parse of a field of several numbers, whichever way the config came
        # (command line, file, saved config.json, Python); a typed value is only checked.
        for f in fields(self):
            if f.metadata["parse"] is not None:
                setattr(self, f.name, f.metadata["parse"](getattr(self, f.name)))

    def augself_weights(self) -> dict[str, float]:
        return {k.removeprefix("augself_"): getattr(self, k) for k in self.__dataclass_fields__
                if k.startswith("augself_")}


assert all(f.default is not MISSING for f in fields(Config))
