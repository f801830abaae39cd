"""Config -> the Objective to train: backbone, method, auxiliary head, probe.
Built on CPU in float32 from the run's seed, before any systems choice."""

from __future__ import annotations

import sys

import torch

from pipelines.recipe import Recipe
from trainer import augself, condproj, equimod, essl
from trainer.config import Config
from trainer.methods import METHODS, Method
from trainer.models import build_backbone
from trainer.objective import LinearProbe, Objective


def stem_for(cfg: Config) -> str:
    return cfg.stem if cfg.stem != "auto" else ("cifar" if cfg.size <= 64 else "imagenet")


def rotated_views(cfg: Config) -> tuple[int, int | None]:
    """(count, side) of the views only an auxiliary head looks at, appended to the
    recipe by the loader: E-SSL's rotated views, else none."""
    if cfg.aux == "essl":
        return cfg.essl_views, cfg.essl_size or None
    return 0, None


def _none(cfg: Config, method: Method, features: int, recipe: Recipe):
    return None


def _augself(cfg: Config, method: Method, features: int, recipe: Recipe):
    return augself.AugSelf(features, augself.rows(cfg.augself_weights()), recipe)


def _equimod(cfg: Config, method: Method, features: int, recipe: Recipe):
    return equimod.EquiMod(features, temperature=cfg.equimod_temperature,
                           weight=cfg.equimod_weight)


def _essl(cfg: Config, method: Method, features: int, recipe: Recipe):
    first = recipe.num_views - cfg.essl_views
    if first < 1 or not all(v.rotate for v in recipe.views[first:]):
        raise ValueError(f"--aux essl: the recipe's last {cfg.essl_views} views must be "
                         "the rotated ones (build the loader with rotated_views(cfg))")
    head = essl.ESSL(features, first, cfg.essl_views, weight=cfg.essl_weight)
    if cfg.warmup_epochs == 0:
        print("warning: --aux essl without a warm-up: E-SSL trains with 10 warm-up epochs, "
              "and its head can overshoot without one (--warmup-epochs 10)", file=sys.stderr)
    return head


def _condproj(cfg: Config, method: Method, features: int, recipe: Recipe):
    condproj.install(method)  # no loss of its own: the method's projector is conditioned
    return None


# --aux NAME -> how to build it around the method: (cfg, method, features, recipe) ->
# the auxiliary head (a module returning its loss) or None; a builder may also change
# the method in place (condproj). The keys are --aux's choices (trainer/options.py).
AUX = {"none": _none, "augself": _augself, "equimod": _equimod, "essl": _essl,
       "condproj": _condproj}


def build_objective(cfg: Config, recipe: Recipe, num_classes: int) -> Objective:
    torch.manual_seed(cfg.seed)
    backbone, features = build_backbone(cfg.backbone, stem_for(cfg))
    # The method reads its hyper-parameters from the config (trainer/methods.py)
    method = METHODS[cfg.method](backbone, features, cfg, large_images=cfg.size > 96,
                                 num_classes=num_classes)
    aux = AUX[cfg.aux](cfg, method, features, recipe)
    probe = LinearProbe(features, num_classes) if cfg.probe and num_classes > 1 else None
    return Objective(method, aux, probe)
