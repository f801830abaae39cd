"""Counter-based random numbers: every draw is a pure function of
(seed, epoch, sample index, view, slot), never of thread scheduling, worker
count, batch composition or backend. The same draw is computed in numpy/numba
(FFCV's crop op, the torchvision loader) and in torch (the device stage).

The mixer is Chris Wellons' "lowbias32" integer hash, chained over the keys;
uniforms are hash / 2**32 in [0, 1).
"""

from __future__ import annotations

import numpy as np
import torch

M32 = 0xFFFFFFFF

# Slots: which draw of a view. Crop uses 0..31 (10 attempts x 2 + 2 positions).
CROP_ATTEMPTS = 10
SLOT_POS_Y, SLOT_POS_X = 20, 21
SLOT_FLIP = 32
SLOT_JITTER = 33
SLOT_COLOR = 34  # 34..37: brightness, contrast, saturation, hue
SLOT_GRAY = 38
SLOT_BLUR = 39
SLOT_SIGMA = 40
SLOT_SOLARIZE = 41
SLOT_ROT = 42  # quarter turns: floor(4u) in {0, 1, 2, 3}
# The per-sample turn shared by views with a rotate_shift: drawn with view key 0
# (the same number for every view of the sample), then shifted per view.
SLOT_ROT_SHARED = 43


def _mix_np(x):
    x = x ^ (x >> np.uint64(16))
    x = (x * np.uint64(0x7FEB352D)) & np.uint64(M32)
    x = x ^ (x >> np.uint64(15))
    x = (x * np.uint64(0x846CA68B)) & np.uint64(M32)
    return x ^ (x >> np.uint64(16))


try:  # numba compiles the mixer so that numba code (FFCV's ops) can call it
    import numba

    _mix_np = numba.njit(cache=False)(_mix_np)
except ImportError:  # numpy-only machines: the plain function serves
    pass


def uniform_np(seed, epoch, index, view, slot):
    """Uniform [0, 1) as float64; arguments are ints or uint64 arrays (broadcast).
    Written with explicit uint64 constants so that numba compiles it unchanged."""
    h = _mix_np(np.uint64(seed) & np.uint64(M32))
    h = _mix_np(h ^ (np.uint64(epoch) & np.uint64(M32)))
    h = _mix_np(h ^ (np.uint64(index) & np.uint64(M32)))
    h = _mix_np(h ^ ((np.uint64(view) * np.uint64(256) + np.uint64(slot)) & np.uint64(M32)))
    return h / 4294967296.0


def _mix_torch(x: torch.Tensor) -> torch.Tensor:
    # int64 products may wrap past 2**63; the low 32 bits kept by the mask are exact.
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & M32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & M32
    return x ^ (x >> 16)


def uniform_torch(seed: int, epoch: int, index: torch.Tensor, view: int, slot: int) -> torch.Tensor:
    """Same numbers as uniform_np, for a tensor of sample indices (float32 out,
    computed in float64 first so that the two agree to float32 rounding)."""
    index = index.to(torch.int64)
    h = _mix_torch(torch.full_like(index, seed & M32))
    h = _mix_torch(h ^ (epoch & M32))
    h = _mix_torch(h ^ (index & M32))
    h = _mix_torch(h ^ ((view * 256 + slot) & M32))
    return (h.to(torch.float64) / 4294967296.0).to(torch.float32)
