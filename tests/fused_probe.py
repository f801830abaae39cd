"""Measurements of the Triton stage, printed as one JSON line; the tests assert on
them. Run as a script with TRITON_INTERPRET=1 on a machine without a GPU (Triton
runs its kernels on CPU tensors in that mode, which must be set before Triton is
imported), or imported and called in-process with device="cuda".

    TRITON_INTERPRET=1 python tests/fused_probe.py kernel|ops|loader [DATA_DIR]
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agreement import noise_and_ramps, reference_view  # noqa: E402 - tests/ on the path


def kernel(device: str = "cpu", n: int = 32, size: int = 32) -> dict:
    """One view with every op firing often, against the reference ops: the uint8
    raw view (levels off, share of values off) and the float view before
    rounding (largest difference, in 8-bit levels)."""
    from pipelines import photometric_cpu, photometric_triton, sampling
    from pipelines.params import DRAWN_AT, WIDTH
    from pipelines.recipe import preset

    r = dataclasses.replace(preset("byol", size).views[1], jitter_p=0.9, blur_p=0.6,
                            solarize_p=0.5, gray_p=0.3, rotate=True)
    crops = noise_and_ramps(n, size)
    p = sampling.sample_rest(r, 0, 0, torch.arange(n), 0)
    params = torch.zeros(n, WIDTH)
    params[:, DRAWN_AT:] = torch.from_numpy(photometric_cpu.rest_of(p))
    views, raw = photometric_triton.render(torch.from_numpy(crops).to(device),
                                           params.to(device), DRAWN_AT, r, (0.0, 0.0, 0.0),
                                           (1.0, 1.0, 1.0), torch.float32, keep_raw=True)
    assert views.is_contiguous(memory_format=torch.channels_last)
    levels, float_diff = [], 0.0
    for i in range(n):
        z, want = reference_view(crops[i], {k: t[i] for k, t in p.items()})
        levels.append(np.abs(want.astype(int) - raw[i].cpu().numpy().astype(int)))
        float_diff = max(float_diff, float((views[i].cpu() - z).abs().max()) * 255)
    levels = np.stack(levels)
    fired = {"gray": int(p["gray"].sum()), "blur": int((p["blur"] > 0).sum()),
             "solarize": int(p["solarize"].sum()), "hue": int((p["color"][:, 3] != 0).sum()),
             "flip": int(p["flip"].sum()),
             "rot": int((p["rot"] != 0).sum())}
    return {"max_levels": int(levels.max()), "share_off": float((levels > 0).mean()),
            "max_float_levels": float_diff, "fired": fired, "n": n}


def ops(device: str = "cpu", batch: int = 16, size: int = 32) -> dict:
    """Dispatched torch ops and Triton launches of the whole GPU stage
    (Finisher, stage "triton") for one batch of two views, crops on the device."""
    from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

    from pipelines import photometric_triton
    from pipelines.batch import Finisher
    from pipelines.recipe import preset

    recipe = preset("augself", size)
    finish = Finisher(recipe, 0, torch.device(device), torch.bfloat16 if device == "cuda"
                      else torch.float32, stage="triton")
    crops = [torch.from_numpy(noise_and_ramps(batch, size, seed=v)).to(device) for v in range(2)]
    crop = np.tile(np.array([0.0, 0.0, 1.0, 1.0], np.float32), (batch, 2, 1))
    labels, index = np.zeros(batch, np.int64), np.arange(batch, dtype=np.int64)
    finish(crops, crop, labels, index, 0)  # compile / warm up

    seen: list[str] = []

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    real = photometric_triton._render
    launches = [0]

    class Launcher:  # the interpreter's own bookkeeping is not the stage's cost
        def __getitem__(self, grid):
            def launch(*a, **kw):
                launches[0] += 1
                with _disable_current_modes():
                    return real[grid](*a, **kw)
            return launch

    photometric_triton._render = Launcher()
    try:
        with Count():
            finish(crops, crop, labels, index, 1)
    finally:
        photometric_triton._render = real
    return {"ops": len(seen), "launches": launches[0], "op_names": seen}


def loader(data: str, device: str = "cpu") -> dict:
    """dali-cpu with the Triton stage (byol views and one rotated view) against the
    reference re-render (PSNR per view) and against the numba stage's parameters
    (bit for bit)."""
    from agreement import sources, view_psnrs

    from pipelines.build import LoaderConfig, build_loader

    cfg = dict(data=data, backend="dali-cpu", preset="byol", size=32, batch_size=24,
               rotated_views=1,
               keep_raw=True, workers=1, device=device)
    fused = build_loader(LoaderConfig(**cfg, stage="triton"))
    plain = build_loader(LoaderConfig(**cfg, stage="auto" if device == "cpu" else "torch"))
    a, b = next(iter(fused)), next(iter(plain))
    same = torch.equal(a.index.cpu(), b.index.cpu()) and all(
        torch.equal(a.params[k].cpu(), b.params[k].cpu()) for k in b.params)
    ps = view_psnrs(a, fused.recipe, sources(data))
    return {"params_equal": bool(same), "psnr_min": float(ps.min()),
            "psnr_median": float(np.median(ps)),
            "channels_last": bool(a.views[0].is_contiguous(memory_format=torch.channels_last))}


if __name__ == "__main__":
    what = sys.argv[1]
    out = {"kernel": kernel, "ops": ops}[what]() if what != "loader" else loader(sys.argv[2])
    print(json.dumps(out))
