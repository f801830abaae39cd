"""Cost of the auxiliary objectives: one training step (forward, backward,
optimiser step) of a method alone, with AugSelf (crop + colour rows), EquiMod,
E-SSL (its 4 extra rotated views at half the side: one more backbone call over
them, the head's cost included) and the conditioned projector, on fixed
in-memory batches (the loader is left out: the figure is the
model's cost), interleaved and timed side by side.

    python -m benchmarks.heads [--method simsiam] [--backbone small --size 32 --batch 256]

Each repeat times every variant for --steps steps after --warmup steps; the
figure is the median step time over repeats (CUDA events on a GPU, wall clock
on the CPU), and the overhead is the median over repeats of the ratio to the
method alone timed just before it.
Results go to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from benchmarks.report import bar_plot, environment, write_section
from pipelines import cli
from pipelines.batch import Batch
from pipelines.params import identity
from pipelines.recipe import preset, with_rotated_views
from trainer import optim, systems
from trainer.build import build_objective
from trainer.config import Config
from trainer.dist import Env

VARIANTS = ("none", "augself", "equimod", "essl", "condproj")
ESSL_VIEWS = 4  # the trainer's default --essl-views


def make_batch(b: int, sizes: list[int], device, dtype):
    """Random views of the given sides, parameters near the identity; views after
    the first two get a quarter turn each (E-SSL's rotated views)."""
    g = torch.Generator().manual_seed(0)
    views = [torch.randn(b, 3, s, s, generator=g).to(device, dtype)
             .contiguous(memory_format=torch.channels_last) for s in sizes]
    params = {k: (v + 0.1 * torch.rand(v.shape, generator=g))
              for k, v in identity(b, len(sizes)).items()}
    params["rot"][:, 2:] = torch.randint(0, 4, params["rot"][:, 2:].shape, generator=g).float()
    params = {k: v.to(device) for k, v in params.items()}
    return Batch(views, params, torch.zeros(b, dtype=torch.long, device=device),
                 torch.arange(b, device=device))


def step_time(model, opt, batch, steps: int, warmup: int, device) -> float:
    def one():
        out = model(batch)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()

    for _ in range(warmup):
        one()
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(steps):
            one()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1000 / steps
    t0 = time.perf_counter()
    for _ in range(steps):
        one()
    return (time.perf_counter() - t0) / steps


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.heads", description=__doc__.split("\n\n")[0])
    p.add_argument("--method", default="simsiam")
    p.add_argument("--backbone", default="small")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--proj", type=int, default=512, help="projector hidden and output width")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-write", action="store_true")
    cli.add_debug(p)
    a = p.parse_args(argv)
    cli.require_positive(p, a, 'size', 'batch', 'proj', 'steps', 'repeats')
    # The trainer's own systems choice (bf16 autocast on GPU, fp32 on CPU).
    sysm = systems.choose(Config(data="-"), Env())
    device, dtype = sysm.device, sysm.dtype
    small = max(8, a.size // 2)
    plain = make_batch(a.batch, [a.size] * 2, device, dtype)
    rotated = make_batch(a.batch, [a.size] * 2 + [small] * ESSL_VIEWS, device, dtype)
    models, batches = {}, {}
    for aux in VARIANTS:
        cfg = Config(data="-", method=a.method, aux=aux, backbone=a.backbone, size=a.size,
                     proj_hidden=a.proj, proj_dim=a.proj, probe=False, essl_views=ESSL_VIEWS)
        recipe = preset("augself", a.size)
        if aux == "essl":
            recipe = with_rotated_views(recipe, ESSL_VIEWS, small)
        m = build_objective(cfg, recipe, 0).to(device).to(memory_format=torch.channels_last)
        opt = optim.build(m.param_groups(), "sgd", 0.01, 0.9, 5e-4)
        models[aux] = (m.train(), opt)
        batches[aux] = rotated if aux == "essl" else plain
    times = {aux: [] for aux in VARIANTS}
    for r in range(a.repeats):
        for aux in VARIANTS:
            m, opt = models[aux]
            with sysm.autocast():
                t = step_time(m, opt, batches[aux], a.steps, a.warmup, device)
            times[aux].append(t)
            print(f"repeat {r + 1}/{a.repeats} {a.method}+{aux}: {t * 1000:.1f} ms/step",
                  flush=True)
    med = {aux: statistics.median(v) for aux, v in times.items()}
    # The machine is noisy (+-15% between repeats): the overhead is the median of
    # per-repeat ratios, each taken between variants timed back to back.
    ratio = {aux: statistics.median(t / n for t, n in zip(times[aux], times["none"]))
             for aux in VARIANTS}
    rows = [f"| {a.method} + {aux} | {med[aux] * 1000:.1f} | {a.batch / med[aux]:.0f} | "
            f"{ratio[aux]:.2f}x |" for aux in VARIANTS]
    body = "\n".join([
        "## Auxiliary heads: cost per training step", "",
        f"Command: `python -m benchmarks.heads --method {a.method} --backbone {a.backbone} "
        f"--size {a.size} --batch {a.batch} --proj {a.proj} --steps {a.steps} --warmup "
        f"{a.warmup} --repeats {a.repeats}` (fixed in-memory batches, 2 "
        f"views, E-SSL {ESSL_VIEWS} more of {small} px, {a.steps} steps after {a.warmup} "
        f"warm-up, median of {a.repeats} "
        f"interleaved repeats; {device.type}, {str(dtype).removeprefix('torch.')}).", "",
        environment(), "",
        "| variant | ms / step (median) | images / s | vs method alone (median paired ratio) |", "|---|---|---|---|",
        *rows, ""])
    if not a.no_write:
        body += "\n" + bar_plot(f"heads-{device.type}", [f"{a.method} + {aux}" for aux in VARIANTS],
                                {"images / s": [a.batch / med[aux] for aux in VARIANTS]},
                                "images / s (model only)",
                                f"Training step cost, {a.backbone} at {a.size} px, "
                                f"batch {a.batch}, {device.type}") + "\n"
    print(body)
    if not a.no_write:
        write_section(f"heads-{device.type}", body)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, "benchmarks.heads"))
