"""SyncBN that also runs on CPU (gloo).

torch's nn.SyncBatchNorm raises on CPU tensors (torch 2.14: "expected input
tensor to be on GPU"), yet a 2-process CPU run has to normalise with global
batch statistics to train the same model as one process on the global batch.
On CUDA we use torch's; on CPU, GlobalBatchNorm: two-pass mean and (biased)
variance over every rank's samples through autograd-aware all_reduces, running
statistics updated with the unbiased variance as F.batch_norm does.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from trainer import dist


class GlobalBatchNorm(_BatchNorm):
    """BatchNorm{1,2}d whose training statistics span all ranks."""

    def _check_input_dim(self, x):
        if x.dim() not in (2, 4):
            raise ValueError(f"GlobalBatchNorm expects 2-D or 4-D input, got {x.dim()}-D")

    def forward(self, x):
        if not (self.training and dist.active()):
            return super().forward(x)
        self._check_input_dim(x)
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.float()
        count = dist.all_reduce_sum(torch.tensor(float(xf.numel() // xf.shape[1])))
        mean = dist.sum_with_grad(xf.sum(dims)) / count
        centred = xf - mean.view(shape)
        var = dist.sum_with_grad((centred * centred).sum(dims)) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else \
                    1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * count / (count - 1), alpha=m)
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert(module: nn.Module, device_type: str) -> nn.Module:
    """Every BatchNorm in ``module`` synchronised across ranks (no-op for a world of 1)."""
    if not dist.active():
        return module
    if device_type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert_cpu(module)


def _convert_cpu(module: nn.Module) -> nn.Module:
    if isinstance(module, _BatchNorm) and not isinstance(module, GlobalBatchNorm):
        new = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
        if module.affine:  # the same Parameter objects: requires_grad (frozen targets) kept
            new.weight, new.bias = module.weight, module.bias
        if module.track_running_stats:
            new.running_mean, new.running_var = module.running_mean, module.running_var
            new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        module.add_module(name, _convert_cpu(child))
    return module
