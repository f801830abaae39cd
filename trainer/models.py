"""Backbones and the MLP builder the methods' projectors and heads are made of.

Backbones return pooled features (B, F). ``resnet18``/``resnet50`` are
torchvision's, built with ``zero_init_residual=True`` and ``fc`` replaced by
Identity (as in the AugSelf reference code), so their state_dict is exactly a
torchvision ResNet's minus ``fc.*``. The ``cifar`` stem (3x3 stride-1 conv1, no
max-pool) is the usual one for 32-96 px images; ``small`` is a 4-stage ResNet
with one basic block per stage and widths 16-128 that trains in minutes on two
CPU cores (the demo's).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torchvision import models as tvm

BACKBONES = ("resnet18", "resnet50", "small")


def _reset_linear(m: nn.Linear) -> None:
    # U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias, the reference code's init.
    bound = 1 / math.sqrt(m.weight.shape[1])
    nn.init.uniform_(m.weight, -bound, bound)
    if m.bias is not None:
        nn.init.uniform_(m.bias, -bound, bound)


def mlp(n_in: int, n_hidden: int, n_out: int, layers: int = 2, last_bn: bool = True,
        last_bn_affine: bool = True) -> nn.Sequential:
    """(layers - 1) x [Linear(no bias)-BN-ReLU] then Linear (bias unless followed by
    BN) and optionally a final BN: the projector/predictor shape every method uses."""
    mods: list[nn.Module] = []
    for _ in range(layers - 1):
        mods += [nn.Linear(n_in, n_hidden, bias=False), nn.BatchNorm1d(n_hidden), nn.ReLU()]
        n_in = n_hidden
    mods.append(nn.Linear(n_in, n_out, bias=not last_bn))
    if last_bn:
        mods.append(nn.BatchNorm1d(n_out, affine=last_bn_affine))
    for m in mods:
        if isinstance(m, nn.Linear):
            _reset_linear(m)
    return nn.Sequential(*mods)


class _Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        nn.init.zeros_(self.bn2.weight)  # zero-init residual, as for the torchvision ones
        self.short = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.short = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                       nn.BatchNorm2d(c_out))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.short(x))


class SmallResNet(nn.Module):
    """3x3 stem, 4 stages of one basic block (strides 1, 2, 2, 2), global pool."""

    def __init__(self, widths=(16, 32, 64, 128)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU())
        blocks, c = [], widths[0]
        for i, w in enumerate(widths):
            blocks.append(_Block(c, w, 1 if i == 0 else 2))
            c = w
        self.blocks = nn.Sequential(*blocks)
        self.num_features = c

    def forward(self, x):
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1), 1)


def check_timm(model: str) -> None:
    """Before any work: timm is installed and knows ``model``."""
    try:
        import timm
    except ImportError:
        raise ValueError(f"backbone timm:{model} needs the timm package (pip install timm)") \
            from None
    if not timm.is_model(model):
        close = timm.list_models(f"*{model.split('_')[0]}*")[:8]
        raise ValueError(f"backbone timm:{model}: timm has no such model"
                         + (f" (similar: {', '.join(close)})" if close else ""))


def _timm_backbone(model: str) -> tuple[nn.Module, int]:
    """timm's ``model`` with its classifier removed (num_classes=0: pooled
    features out). ViTs get dynamic_img_size: any input side that is a multiple
    of the patch, the 224 px position table interpolated, so the exported
    weights load into ``timm.create_model(model, num_classes=0)`` unchanged."""
    import timm

    check_timm(model)
    kwargs = {}
    if "vit" in model or "deit" in model:
        kwargs["dynamic_img_size"] = True
    net = timm.create_model(model, pretrained=False, num_classes=0, **kwargs)
    return net, net.num_features


def build_backbone(name: str, stem: str = "imagenet") -> tuple[nn.Module, int]:
    """-> (module mapping (B, 3, H, W) to (B, F), F). ``name``: one of BACKBONES
    or timm:MODEL."""
    if name.startswith("timm:"):
        return _timm_backbone(name.removeprefix("timm:"))
    if name == "small":
        net = SmallResNet()
        return net, net.num_features
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    if stem not in ("imagenet", "cifar"):
        raise ValueError(f"unknown stem {stem!r}; choose imagenet or cifar")
    net = getattr(tvm, name)(weights=None, zero_init_residual=True)
    if stem == "cifar":
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    features = net.fc.in_features
    net.fc = nn.Identity()
    return net, features


def backbone_state_dict(backbone: nn.Module) -> dict[str, torch.Tensor]:
    """A plain state_dict (CPU tensors, no wrapper prefixes). For the torchvision
    ResNets it loads into ``torchvision.models.resnetXX()`` with strict=True once
    ``fc`` is set aside (``fc`` is Identity here, so it has no entries)."""
    sd = backbone.state_dict()
    return {k.removeprefix("_orig_mod."): v.detach().cpu().clone() for k, v in sd.items()}
