"""SSL methods: each an nn.Module whose ``forward(batch)`` returns a dict with
``"loss"`` (scalar), ``"feats"`` (the backbone features of every view, with
gradient, for the auxiliary heads and the probe) and tensors to log.

Hyper-parameters are read from the run's Config, the one place they are
declared (trainer/options.py: proj_hidden, proj_dim, pred_hidden, proj_layers,
temperature, target_momentum, queue_size, prototypes, freeze_prototypes,
barlow_lambda, vicreg_coeffs; 0: the method's default); the number of classes
(supervised) comes from the dataset. Defaults are the AugSelf reference code's
(Lee et al. 2021, github hankook/AugSelf, pretrain.py / trainers.py): projector
and predictor widths, temperatures, MoCo's queue and momentum, BYOL's cosine
momentum schedule, SwAV's Sinkhorn (eps 0.05, 3 iterations, T 0.1) and
prototypes frozen for the first 410 steps, SimSiam's predictor at a fixed
learning rate. Momentum
encoders and queues live inside their method and are saved with it.

Hooks the loop calls for every method alike (no branching on names):
``param_groups()``, ``after_backward(step)``, ``after_step(progress, ok)``
and ``forward_state()``. ``ok`` (a 0-dim bool tensor, or None: no check) says
whether the step is applied: when false, ``after_step`` changes nothing (the
momentum encoders and MoCo's queue stay bit for bit; trainer/masked.py), and
what ``forward_state()`` lists (besides BN statistics, which the step finds
itself) is put back as it was before the forward pass (trainer/step.py).
"""

from __future__ import annotations

import copy
import math
import typing

import torch
import torch.nn.functional as F
from torch import nn

from trainer import dist, losses, masked
from trainer.models import mlp

if typing.TYPE_CHECKING:
    from trainer.options import Config


def _pick(value, default):
    return value if value else default


class Projector(nn.Sequential):
    """A method's projector: an mlp() called as every projector is, on a view's
    features and its parameter row (B, params.WIDTH), which a plain one ignores and
    a conditioned one (trainer/condproj.py) reads; one call, no test of which it is.
    A Sequential of mlp()'s layers, so its state-dict keys are mlp()'s."""

    def forward(self, f: torch.Tensor, row: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(f)


def projector(*args, **kwargs) -> Projector:
    """mlp(*args, **kwargs) as a Projector (the same layers, built alike)."""
    return Projector(*mlp(*args, **kwargs))


class Method(nn.Module):
    def __init__(self, backbone: nn.Module, features: int):
        super().__init__()
        self.backbone, self.features = backbone, features

    def project(self, f, batch, v: int):
        """The projector on view v's features and its parameter row (a view of the
        Batch's row, no copy), which only a conditioned projector reads."""
        return self.projector(f, batch.row[:, v])

    def project_target(self, f, batch, v: int):
        return self.target_projector(f, batch.row[:, v])

    def encode(self, views):
        # One backbone call per view, as the reference code does: BN statistics
        # stay per view (concatenating views would mix them).
        return [self.backbone(v) for v in views]

    def param_groups(self) -> list[dict]:
        return [{"params": [p for p in self.parameters() if p.requires_grad], "fixed_lr": False}]

    def after_backward(self, step: int) -> None:
        pass

    def after_step(self, progress: float, ok: torch.Tensor | None = None) -> None:
        pass

    def forward_state(self) -> list[torch.Tensor]:
        """Tensors other than BN statistics that ``forward`` changes in place."""
        return []


@torch.no_grad()
def _momentum_update(online: nn.Module, target: nn.Module, m: float,
                     ok: torch.Tensor | None = None) -> None:
    """target <- m target + (1 - m) online; with ``ok``, only where it is true."""
    pts, pos = list(target.parameters()), [p.detach() for p in online.parameters()]
    if ok is None:
        for po, pt in zip(pos, pts):
            pt.mul_(m).add_(po, alpha=1 - m)
        return
    new = torch._foreach_mul(pts, m)  # the same two operations, out of place
    torch._foreach_add_(new, pos, alpha=1 - m)
    masked.assign(ok, pts, new)


class SimSiam(Method):
    """Chen & He 2021. Projector 2048-2048 (3 layers for ImageNet-size images, 2
    for small ones, last BN); predictor 2048-512-2048; loss 0.5 (D(p1,z2) + D(p2,z1))."""

    def __init__(self, backbone, features, cfg: Config, large_images: bool,
                 num_classes: int = 0):
        super().__init__(backbone, features)
        d = _pick(cfg.proj_dim, 2048)
        self.projector = projector(features, _pick(cfg.proj_hidden, 2048), d,
                                   _pick(cfg.proj_layers, 3 if large_images else 2),
                                   last_bn=True)
        self.predictor = mlp(d, _pick(cfg.pred_hidden, d // 4), d, 2, last_bn=False)

    def param_groups(self):
        pred = set(self.predictor.parameters())
        rest = [p for p in self.parameters() if p.requires_grad and p not in pred]
        # The predictor keeps its initial learning rate (SimSiam Sec. 4.2, "fix lr").
        return [{"params": rest, "fixed_lr": False},
                {"params": list(self.predictor.parameters()), "fixed_lr": True}]

    def forward(self, batch):
        y = self.encode(batch.views[:2])
        z = [self.project(f, batch, v) for v, f in enumerate(y)]
        p = [self.predictor(f) for f in z]
        loss = 0.5 * (losses.negative_cosine(p[0], z[1]) + losses.negative_cosine(p[1], z[0]))
        return {"loss": loss, "feats": y}


class SimCLR(Method):
    """Chen et al. 2020. Projector F-F-128 (no last BN), NT-Xent at T = 0.2."""

    def __init__(self, backbone, features, cfg: Config, large_images: bool,
                 num_classes: int = 0):
        super().__init__(backbone, features)
        self.projector = projector(features, _pick(cfg.proj_hidden, features),
                                   _pick(cfg.proj_dim, 128), _pick(cfg.proj_layers, 2),
                                   last_bn=False)
        self.temperature = _pick(cfg.temperature, 0.2)

    def forward(self, batch):
        y = self.encode(batch.views[:2])
        z = [self.project(f, batch, v) for v, f in enumerate(y)]
        return {"loss": losses.nt_xent(z[0], z[1], self.temperature), "feats": y}


class MoCo(Method):
    """MoCo v2 (Chen et al. 2020): query from view 1, key from view 2 through the
    momentum encoder (m = 0.999), K = 65536 negatives in a queue, T = 0.2,
    projector F-F-128. The queue receives the keys of the global batch; the
    AugSelf code enqueues the queries instead, which we do not copy."""

    def __init__(self, backbone, features, cfg: Config, large_images: bool,
                 num_classes: int = 0):
        super().__init__(backbone, features)
        d = _pick(cfg.proj_dim, 128)
        self.projector = projector(features, _pick(cfg.proj_hidden, features), d,
                                   _pick(cfg.proj_layers, 2), last_bn=False)
        self.target_backbone = copy.deepcopy(backbone).requires_grad_(False)
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.temperature = _pick(cfg.temperature, 0.2)
        self.m = _pick(cfg.target_momentum, 0.999)
        self.register_buffer("queue", F.normalize(torch.randn(cfg.queue_size, d), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.pending = None  # this step's gathered keys, for after_step

    def forward(self, batch):
        y = self.encode(batch.views[:2])
        q = F.normalize(self.project(y[0], batch, 0), dim=1)
        with torch.no_grad():
            k = F.normalize(self.project_target(self.target_backbone(batch.views[1]), batch, 1),
                            dim=1)
        # No copy of the queue (32 MB at K = 65536): the keys are enqueued in after_step,
        # after the backward pass that reads it (autograd would raise otherwise), where
        # the step's ``ok`` is known, so a skipped step enqueues nothing. They are
        # gathered here: a collective, in the same order on every rank.
        loss = losses.moco_infonce(q, k, self.queue, self.temperature)
        self.pending = dist.gather(k.to(self.queue.dtype))  # bf16 keys, fp32 queue
        return {"loss": loss, "feats": y}

    @torch.no_grad()
    def after_step(self, progress, ok=None):
        keys, self.pending = self.pending, None
        if keys is not None:
            n, size = len(keys), len(self.queue)
            pos = (self.queue_ptr + torch.arange(n, device=keys.device)) % size
            ptr = (self.queue_ptr + n) % size
            if ok is not None:  # a skipped step writes back the rows and pointer it has
                keys = torch.where(ok, keys, self.queue[pos])
                ptr = torch.where(ok, ptr, self.queue_ptr)
            self.queue[pos] = keys
            self.queue_ptr.copy_(ptr)
        _momentum_update(self.backbone, self.target_backbone, self.m, ok)
        _momentum_update(self.projector, self.target_projector, self.m, ok)


class BYOL(Method):
    """Grill et al. 2020. Projector F-4096-256, predictor 256-4096-256 (no last
    BN); target momentum 1 - (1 - 0.996)(cos(pi k/K) + 1)/2 over training
    progress k/K; loss = sum over both directions of 2 - 2 cos."""

    def __init__(self, backbone, features, cfg: Config, large_images: bool,
                 num_classes: int = 0):
        super().__init__(backbone, features)
        d, hid = _pick(cfg.proj_dim, 256), _pick(cfg.proj_hidden, 4096)
        self.projector = projector(features, hid, d, _pick(cfg.proj_layers, 2), last_bn=False)
        self.predictor = mlp(d, _pick(cfg.pred_hidden, hid), d, 2, last_bn=False)
        self.target_backbone = copy.deepcopy(backbone).requires_grad_(False)
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.m0 = _pick(cfg.target_momentum, 0.996)

    def forward(self, batch):
        y = self.encode(batch.views[:2])
        p = [self.predictor(self.project(f, batch, v)) for v, f in enumerate(y)]
        with torch.no_grad():
            t = [self.project_target(self.target_backbone(x), batch, v)
                 for v, x in enumerate(batch.views[:2])]
        loss = losses.byol_regression(p[0], t[1]) + losses.byol_regression(p[1], t[0])
        return {"loss": loss, "feats": y}

    def momentum(self, progress: float) -> float:
        return 1 - (1 - self.m0) * (math.cos(math.pi * progress) + 1) / 2

    def after_step(self, progress, ok=None):
        m = self.momentum(progress)
        _momentum_update(self.backbone, self.target_backbone, m, ok)
        _momentum_update(self.projector, self.target_projector, m, ok)


class SwAV(Method):
    """Caron et al. 2020 with multi-crop: codes from the first two views
    (Sinkhorn, eps 0.05, 3 iterations, over the global batch), predicted from
    every other view at T = 0.1. Projector F-2048-128, 100 unit-norm prototypes
    (AugSelf code), frozen for the first 410 steps."""

    def __init__(self, backbone, features, cfg: Config, large_images: bool,
                 num_classes: int = 0):
        super().__init__(backbone, features)
        d = _pick(cfg.proj_dim, 128)
        self.projector = projector(features, _pick(cfg.proj_hidden, 2048), d,
                                   _pick(cfg.proj_layers, 2), last_bn=False)
        self.prototypes = nn.Linear(d, cfg.prototypes, bias=False)
        self.temperature, self.freeze = _pick(cfg.temperature, 0.1), cfg.freeze_prototypes

    def forward(self, batch):
        with torch.no_grad():
            self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))
        y = self.encode(batch.views)
        scores = [self.prototypes(F.normalize(self.project(f, batch, v), dim=1))
                  for v, f in enumerate(y)]
        codes = [losses.sinkhorn(s.detach(), 0.05, 3) for s in scores[:2]]
        loss = losses.swapped_prediction(codes, scores, self.temperature)
        return {"loss": loss, "feats": y}

    def after_backward(self, step):
        if step < self.freeze:
            self.prototypes.weight.grad = None

    def forward_state(self):
        return [self.prototypes.weight]  # normalised in place by forward

    def param_groups(self):
        # The prototypes in a group of their own: they get their first gradient only
        # after --freeze-prototypes steps, when every other parameter already has a
        # momentum buffer, and torch's multi-tensor SGD fails on a group that mixes
        # parameters with and without one ("expected Tensor as element 41", at step
        # 411 of a default run; found by tests/test_config_property.py).
        protos = set(self.prototypes.parameters())
        rest = [p for p in self.parameters() if p.requires_grad and p not in protos]
        return [{"params": rest, "fixed_lr": False},
                {"params": list(protos), "fixed_lr": False}]


class _Decorrelating(Method):
    """Barlow Twins and VICReg: no predictor, no target; a wide 3-layer projector
    (F-8192-8192-8192 for ImageNet-size views, 2048 wide for small ones, BN-ReLU
    between layers, none after the last) and a loss on the global batch of the
    two views' embeddings, ``self.loss(z1, z2)``."""

    def __init__(self, backbone, features, cfg: Config, large_images: bool,
                 num_classes: int = 0):
        super().__init__(backbone, features)
        width = 8192 if large_images else 2048
        self.projector = projector(features, _pick(cfg.proj_hidden, width),
                                   _pick(cfg.proj_dim, width), _pick(cfg.proj_layers, 3),
                                   last_bn=False)

    def forward(self, batch):
        y = self.encode(batch.views[:2])
        z = [self.project(f, batch, v) for v, f in enumerate(y)]
        return {"loss": self.loss(z[0], z[1]), "feats": y}


class BarlowTwins(_Decorrelating):
    """Zbontar et al. 2021: lambda 0.0051 (losses.barlow_twins)."""

    def __init__(self, backbone, features, cfg: Config, large_images: bool,
                 num_classes: int = 0):
        super().__init__(backbone, features, cfg, large_images)
        self.lambd = cfg.barlow_lambda

    def loss(self, z1, z2):
        return losses.barlow_twins(z1, z2, self.lambd)


class VICReg(_Decorrelating):
    """Bardes et al. 2022: coefficients 25 (invariance), 25 (variance), 1
    (covariance) (losses.vicreg)."""

    def __init__(self, backbone, features, cfg: Config, large_images: bool,
                 num_classes: int = 0):
        super().__init__(backbone, features, cfg, large_images)
        self.coeffs = cfg.vicreg_coeffs

    def loss(self, z1, z2):
        return losses.vicreg(z1, z2, *self.coeffs)


class Supervised(Method):
    """Cross-entropy on the labels from the first two views, averaged (a baseline;
    -1 labels ignored; views after them are an auxiliary head's)."""

    def __init__(self, backbone, features, cfg: Config, large_images: bool,
                 num_classes: int = 0):
        super().__init__(backbone, features)
        if num_classes < 1:
            raise ValueError("supervised needs a labelled dataset (the manifest lists no classes)")
        self.classifier = nn.Linear(features, num_classes)

    def forward(self, batch):
        y = self.encode(batch.views[:2])
        loss = sum(F.cross_entropy(self.classifier(f), batch.labels, ignore_index=-1)
                   for f in y) / len(y)
        return {"loss": loss, "feats": y}


METHODS = {"simsiam": SimSiam, "simclr": SimCLR, "moco": MoCo, "byol": BYOL, "swav": SwAV,
           "barlow": BarlowTwins, "vicreg": VICReg, "supervised": Supervised}
