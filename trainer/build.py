"""Config -> the Objective to train: backbone, method, auxiliary head, probe.
Built on CPU in float32 from the run's seed, before any systems choice."""

from __future__ import annotations

import sys

import torch

from pipelines.recipe import Recipe
from trainer import augself, condproj, equimod, essl
from trainer.config import Config
from trainer.methods import METHODS, Heads
from trainer.models import build_backbone
from trainer.objective import LinearProbe, Objective


def stem_for(cfg: Config) -> str:
    return cfg.stem if cfg.stem != "auto" else ("cifar" if cfg.size <= 64 else "imagenet")


def heads(cfg: Config, num_classes: int) -> Heads:
    return Heads(proj_hidden=cfg.proj_hidden, proj_dim=cfg.proj_dim, pred_hidden=cfg.pred_hidden,
                 proj_layers=cfg.proj_layers, temperature=cfg.temperature,
                 momentum=cfg.target_momentum, queue_size=cfg.queue_size,
                 prototypes=cfg.prototypes, freeze_prototypes=cfg.freeze_prototypes,
                 num_classes=num_classes, barlow_lambda=cfg.barlow_lambda,
                 vicreg=tuple(float(x) for x in cfg.vicreg_coeffs.split(",")))


def rotated_views(cfg: Config) -> tuple[int, int | None]:
    """(count, side) of the views only an auxiliary head looks at, appended to the
    recipe by the loader: E-SSL's rotated views, else none."""
    if cfg.aux == "essl":
        return cfg.essl_views, cfg.essl_size or None
    return 0, None


def build_objective(cfg: Config, recipe: Recipe, num_classes: int) -> Objective:
    torch.manual_seed(cfg.seed)
    backbone, features = build_backbone(cfg.backbone, stem_for(cfg))
    method = METHODS[cfg.method](backbone, features, heads(cfg, num_classes),
                                 large_images=cfg.size > 96)
    if cfg.aux == "augself":
        aux = augself.AugSelf(features, augself.rows(cfg.augself_weights()), recipe)
    elif cfg.aux == "equimod":
        aux = equimod.EquiMod(features, temperature=cfg.equimod_temperature,
                              weight=cfg.equimod_weight)
    elif cfg.aux == "essl":
        first = recipe.num_views - cfg.essl_views
        if first < 1 or not all(v.rotate for v in recipe.views[first:]):
            raise ValueError(f"--aux essl: the recipe's last {cfg.essl_views} views must be "
                             "the rotated ones (build the loader with rotated_views(cfg))")
        aux = essl.ESSL(features, first, cfg.essl_views, weight=cfg.essl_weight)
        if cfg.warmup_epochs == 0:
            print("warning: --aux essl without a warm-up: E-SSL trains with 10 warm-up epochs, "
                  "and its head can overshoot without one (--warmup-epochs 10)",
                  file=sys.stderr)
    else:  # none, or condproj: no loss of its own, the method's projector is conditioned
        aux = None
    if cfg.aux == "condproj":
        condproj.install(method)
    probe = LinearProbe(features, num_classes) if cfg.probe and num_classes > 1 else None
    return Objective(method, aux, probe)
