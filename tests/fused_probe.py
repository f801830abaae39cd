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


def rows(recipe, crop, index, epoch: int) -> np.ndarray:
    """The parameter row a loader hands the Finisher: ``crop`` and draws of seed 0."""
    from pipelines.photometric_cpu import param_rows, recipe_rows
    return param_rows(recipe_rows(recipe), 0, epoch, index, crop)


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
    finish = Finisher(recipe, torch.device(device), torch.bfloat16 if device == "cuda"
                      else torch.float32, stage="triton")
    crops = [torch.from_numpy(noise_and_ramps(batch, size, seed=v)).to(device) for v in range(2)]
    crop = np.tile(np.array([0.0, 0.0, 1.0, 1.0], np.float32), (batch, 2, 1))
    labels, index = np.zeros(batch, np.int64), np.arange(batch, dtype=np.int64)
    finish(crops, rows(recipe, crop, index, 0), labels, index)  # compile / warm up

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
            finish(crops, rows(recipe, crop, index, 1), labels, index)
    finally:
        photometric_triton._render = real
    return {"ops": len(seen), "launches": launches[0], "op_names": seen}


def loader(data: str, device: str = "cpu") -> dict:
    """dali-cpu with the Triton stage (byol views and one rotated view) against the
    reference re-render (PSNR per view) and against the numba stage's parameters
    (bit for bit); which stage rendered the batch, and the self-check's outcome."""
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
    # the stage that actually rendered: a Triton stage that raised or failed its
    # self-check on the first batch has switched itself to "torch" by now, and the
    # torch stage meets the same bounds
    return {"params_equal": bool(same), "psnr_min": float(ps.min()),
            "psnr_median": float(np.median(ps)), "stage": fused.finish.stage,
            "self_check": fused.finish.self_check_result,
            "channels_last": bool(a.views[0].is_contiguous(memory_format=torch.channels_last))}


def self_check(device: str = "cpu", batch: int = 4, size: int = 16) -> dict:
    """The Triton stage's self-check on first use (pipelines/triton_check.py), for
    a healthy kernel and for faults injected after it (photometric_triton.render
    wrapped): per case, the recorded outcome, the lines on stderr, the stage after
    two batches, which batches the kernel rendered, and how the first batch handed
    over compares with the torch stage's (largest difference in 8-bit levels;
    whether views, parameters, labels and indices are equal)."""
    import contextlib
    import io

    from pipelines import photometric_triton, triton_check
    from pipelines.batch import Finisher
    from pipelines.params import DRAWN_AT, WIDTH
    from pipelines.recipe import preset

    recipe = preset("augself", size)
    std = recipe.std
    crops = [torch.from_numpy(noise_and_ramps(batch, size, seed=v)).to(device) for v in range(2)]
    crop = np.tile(np.array([0.0, 0.0, 1.0, 1.0], np.float32), (batch, 2, 1))
    labels, index = np.arange(batch, dtype=np.int64) % 3, np.arange(batch, dtype=np.int64)
    real = photometric_triton.render

    def shift_one(y, v, raw):  # a kernel made to shift one value of view 1 by 3 levels
        if v == 1:
            y[0, 1, 5, 7] += 3 / (255 * std[1])
    def nudge_one(y, v, raw):  # one value 1 level off: roundoff's worst, tolerated
        if v == 1:
            y[0, 1, 5, 7] += 1 / (255 * std[1])
    def nudge_many(y, v, raw):  # 1 level on 32 of 3,072 values (1.04% > 0.5%) of view 0
        if v == 0:
            y[0, 0, :2, :] += 1 / (255 * std[0])
    def shift_raw(y, v, raw):  # the kept uint8 view alone: 3 levels on one value
        if v == 0 and raw is not None:
            raw[1, 4, 4, 2] = (int(raw[1, 4, 4, 2]) + 3) % 256

    def case(fault=None, check=True, keep_raw=False, dtype=torch.float32) -> dict:
        rendered = []  # (finisher call, view) of every Triton launch

        def render(crops_v, params, col, *a, **kw):
            v = (col - DRAWN_AT) // WIDTH
            rendered.append([len(outcomes), v])
            y, raw = real(crops_v, params, col, *a, **kw)
            if fault is not None:
                fault(y, v, raw)
            return y, raw

        fused = Finisher(recipe, torch.device(device), dtype, keep_raw, "triton",
                         self_check=check)
        plain = Finisher(recipe, torch.device(device), dtype, keep_raw, "torch")
        outcomes, err = [], io.StringIO()
        photometric_triton.render = render
        try:
            with contextlib.redirect_stderr(err):
                for epoch in (0, 1):
                    outcomes.append(fused([c.clone() for c in crops],
                                          rows(recipe, crop, index, epoch), labels, index))
        finally:
            photometric_triton.render = real
        a, b = outcomes[0], plain([c.clone() for c in crops], rows(recipe, crop, index, 0),
                                  labels, index)
        mean_t, std_t = fused._consts["mean"], fused._consts["std"]
        off = max(triton_check.disagreement(triton_check.levels(x, mean_t, std_t),
                                            triton_check.levels(y, mean_t, std_t))[0]
                  for x, y in zip(a.views, b.views))
        if keep_raw:
            off = max(off, *(triton_check.disagreement(x, y)[0] for x, y in zip(a.raw, b.raw)))
        return {"result": fused.self_check_result, "stage": fused.stage,
                "stderr": err.getvalue().splitlines(), "rendered": rendered,
                "levels_off_torch": off,
                "equals_torch": all(torch.equal(x, y) for x, y in zip(a.views, b.views))
                and all(torch.equal(a.params[k], b.params[k]) for k in b.params)
                and torch.equal(a.labels, b.labels) and torch.equal(a.index, b.index)
                and (not keep_raw or all(torch.equal(x, y) for x, y in zip(a.raw, b.raw)))}

    out = {"healthy": case(keep_raw=True), "shift_one": case(shift_one),
           "nudge_one": case(nudge_one), "nudge_many": case(nudge_many),
           "shift_raw": case(shift_raw, keep_raw=True), "off": case(shift_one, check=False)}
    if device == "cuda":  # the training dtype: bf16's coarser steps must pass too
        out["healthy_bf16"] = case(dtype=torch.bfloat16)
    return out


if __name__ == "__main__":
    what = sys.argv[1]
    out = {"kernel": kernel, "ops": ops, "self_check": self_check}[what]() \
        if what != "loader" else loader(sys.argv[2])
    print(json.dumps(out))
