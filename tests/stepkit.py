"""One training step outside the loop, for every method and auxiliary head: the
objective, optimiser and a synthetic batch shaped by the run's own recipe (SwAV's
multi-crop, E-SSL's rotated views), small enough for 2 CPU cores."""

import torch

from pipelines.batch import Batch
from pipelines.params import identity
from pipelines.recipe import preset, with_rotated_views
from trainer import optim, systems
from trainer.build import build_objective, rotated_views
from trainer.config import from_argv
from trainer.methods import METHODS
from trainer.run import resolve_preset

AUX = ("none", "augself", "equimod", "essl", "condproj")
PAIRS = [(m, a) for m in METHODS for a in AUX if not (m == "supervised" and a == "condproj")]
CLASSES = 4

SMALL = ["--data", "-", "--out", "-", "--backbone", "small", "--size", "16", "--small-size", "8",
         "--proj-hidden", "32", "--proj-dim", "16", "--pred-hidden", "8", "--queue-size", "16",
         "--prototypes", "8", "--freeze-prototypes", "0", "--essl-views", "2"]


def build(method: str, aux: str, *extra: str, optimizer: str = "sgd", device: str = "cpu",
          dtype: torch.dtype = torch.float32):
    """-> (objective in train mode on ``device``, optimiser, Systems (``device``,
    autocast ``dtype``; fp32 is no autocast), recipe)."""
    cfg = from_argv([*SMALL, "--method", method, "--aux", aux, *extra])
    recipe = preset(resolve_preset(cfg), cfg.size, cfg.small_size or None)
    n, side = rotated_views(cfg)
    if n:
        recipe = with_rotated_views(recipe, n, side or max(8, cfg.size // 2))
    objective = build_objective(cfg, recipe, CLASSES).train().to(device)
    opt = optim.build(objective.param_groups(), optimizer, 0.1, 0.9, 5e-4)
    return objective, opt, systems.Systems(torch.device(device), dtype, None), recipe


def batch(recipe, seed: int, b: int = 8, poison: bool = False, device: str = "cpu") -> Batch:
    """Random views and parameters in their ranges (drawn on the CPU, then moved to
    ``device``); ``poison``: a NaN in every view, so that every loss term of the
    step is NaN."""
    g = torch.Generator().manual_seed(seed)
    v = recipe.num_views
    params = {k: t + 0.1 * torch.rand(t.shape, generator=g) for k, t in identity(b, v).items()}
    params["rot"] = torch.randint(0, 4, (b, v, 1), generator=g).float()
    views = [torch.randn(b, 3, r.size, r.size, generator=g) for r in recipe.views]
    if poison:
        for x in views:
            x[0, 0, 0, 0] = float("nan")
    labels = torch.randint(0, CLASSES, (b,), generator=g)
    if device != "cpu":
        views = [x.to(device) for x in views]
        params = {k: t.to(device) for k, t in params.items()}
        labels = labels.to(device)
    return Batch(views, params, labels, torch.arange(b, device=device))
