"""Systems choices, made once at set-up: device, dtype and autocast, GradScaler
(fp16 only), channels_last, torch.compile, SyncBN, and DDP last."""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass

import torch
from torch import nn

from trainer import sync_bn
from trainer.config import Config
from trainer.dist import Env


@dataclass
class Systems:
    device: torch.device
    dtype: torch.dtype           # what the loader delivers and autocast computes in
    scaler: torch.amp.GradScaler | None

    def autocast(self):
        if self.dtype in (torch.float32, torch.float64):  # no autocast: weights' own dtype
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)


def choose(cfg: Config, env: Env) -> Systems:
    if cfg.device == "auto":
        device = torch.device(f"cuda:{env.local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(cfg.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    precision = cfg.precision
    if precision == "auto":
        # bf16 on GPU; fp32 on CPU, where bf16 autocast is ~20x slower on these machines.
        precision = "bf16" if device.type == "cuda" else "fp32"
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
             "fp64": torch.float64}[precision]
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    return Systems(device, dtype, scaler)


def prepare(model: nn.Module, cfg: Config, sysm: Systems, env: Env):
    """-> (the module to call: DDP-wrapped when distributed, the bare module)."""
    model = sync_bn.convert(model, sysm.device.type)
    model.to(sysm.device)
    if sysm.dtype == torch.float64:  # fp64: weights and buffers too, not only the inputs
        model.to(torch.float64)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    if cfg.compile:
        # The whole objective (method, auxiliary heads, probe), in place: with only
        # the backbone compiled, the heads stayed eager and cost 10-13% of an H100
        # step (issue 10); compiled with it, +0.3%. State-dict keys are unchanged.
        model.compile()
    if env.world > 1:
        ids = [sysm.device.index] if sysm.device.type == "cuda" else None
        # Buffers (BN statistics under SyncBN, MoCo's queue) are identical on every
        # rank by construction: no need to broadcast them each step.
        new_kw = "forward_sync_buffers" in inspect.signature(
            nn.parallel.DistributedDataParallel).parameters
        sync = {"forward_sync_buffers": False} if new_kw else {"broadcast_buffers": False}
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=ids, **sync)
        return wrapped, model
    return model, model
