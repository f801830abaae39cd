"""The Batch (pipelines/ -> trainer/) and the last stage every backend shares:
uint8 crops -> photometric ops -> normalise -> channels_last, on the device."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipelines import photometric
from pipelines.params import FIELDS
from pipelines.recipe import Recipe
from pipelines.sampling import sample_rest


def compiled_apply(enabled: bool):
    """photometric.apply, fused by torch.compile when ``enabled``: ~40 elementwise
    passes over the batch become a few kernels (measured on 2 CPU cores: hue shift
    215 -> 45 ms for 64 views of 224 px); the first batch pays ~20 s of compilation.
    Used where the stage runs in torch: on a GPU (a CPU device renders with
    photometric_cpu, which is ~5x faster still)."""
    return torch.compile(photometric.apply) if enabled else photometric.apply


@dataclass
class Batch:
    views: list[torch.Tensor]           # V x (B, 3, H_v, W_v), normalised, channels_last
    params: dict[str, torch.Tensor]     # field -> float32 (B, V, width)
    labels: torch.Tensor                # int64 (B,), -1 where unlabelled
    index: torch.Tensor                 # int64 (B,), position in the dataset
    raw: list[torch.Tensor] | None = None  # V x uint8 (B, H, W, 3) before normalising, on request

    def __len__(self) -> int:
        return len(self.index)


def finish(crops: list[torch.Tensor], crop_params: torch.Tensor, labels: torch.Tensor,
           index: torch.Tensor, recipe: Recipe, seed: int, epoch: int,
           device: torch.device, dtype: torch.dtype = torch.float32,
           keep_raw: bool = False, done: dict[str, torch.Tensor] | None = None,
           apply=photometric.apply, render_cpu: bool = False) -> Batch:
    """crops: V x uint8 (B, S_v, S_v, 3) after crop+resize (no flip yet);
    crop_params: float32 (B, V, 4). Draws the remaining parameters with the
    counter RNG (seed, epoch, index, view), applies them, normalises.
    ``done``: the crops are already final views (rendered per image by the
    torchvision workers or by FFCV's op on a CPU device) and these are their
    parameters, field -> (B, V, w). ``render_cpu``: render the crops here with the
    numba kernel (photometric_cpu) instead of ``apply`` (CPU devices: dali-cpu).
    Final uint8 views are normalised in one multiply-add: (x/255 - mean)/std."""
    index = index.to(device, non_blocking=True).long()
    mean = torch.tensor(recipe.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(recipe.std, device=device).view(1, 3, 1, 1)
    scale, shift = 1.0 / (255.0 * std), -mean / std
    per_view, views, raw = [], [], []
    for v, (crop, vr) in enumerate(zip(crops, recipe.views)):
        if done is not None:
            p = {k: t[:, v].to(device) for k, t in done.items() if k != "crop"}
        elif render_cpu:  # numba imported only where it is asked for
            from pipelines import photometric_cpu

            p = sample_rest(vr, seed, epoch, index, v)
            crop = crop.contiguous()
            photometric_cpu.render_batch(crop.numpy(), photometric_cpu.rest_of(p), crop.numpy())
        else:  # the torch stage, on the device
            p = sample_rest(vr, seed, epoch, index, v)
            x = crop.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
            x = apply(x, p, vr)
            if keep_raw:
                raw.append((x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu())
            x = ((x - mean) / std).to(dtype).contiguous(memory_format=torch.channels_last)
        if done is not None or render_cpu:  # final uint8 views
            if keep_raw:
                raw.append(crop.cpu().clone())
            x = crop.to(device, non_blocking=True).permute(0, 3, 1, 2).float()
            x = x.mul_(scale).add_(shift).to(dtype).contiguous(memory_format=torch.channels_last)
        views.append(x)
        per_view.append(p)
    params = {k: torch.stack([p[k] for p in per_view], dim=1) for k in FIELDS if k != "crop"}
    params["crop"] = crop_params.to(device, non_blocking=True).float()
    return Batch(views, {k: params[k] for k in FIELDS}, labels.to(device).long(), index,
                 raw if keep_raw else None)
