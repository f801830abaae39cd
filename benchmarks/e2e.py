"""Training at the speed of the model? End-to-end images/s through each loader
next to the model-only ceiling, in the same process and run, eager and compiled.

    python -m benchmarks.e2e [--quick] [--backends dali-gpu,torchvision] [--modes eager,compiled]

For each mode (eager; the whole objective compiled) one objective is built with
the trainer's own systems choices (bf16 autocast and channels_last on a GPU,
fp32 on a CPU) and trained, for each backend in turn:
- ceiling: steps on one batch of that loader kept on the device (no loading);
- e2e: steps on the loader's batches (set_epoch, iterate, train: the loop's work).
Both are timed over --steps steps after --warmup steps (CUDA events on a GPU,
the wall clock on a CPU), interleaved, --repeats times; figures are medians,
the ratio the median of per-repeat ratios. "data share" is the host time the
training thread spends waiting in the loader's ``next()``, as a share of the
e2e step. Prints one line per backend and mode:

    BACKEND MODE: e2e X img/s, ceiling Y img/s, ratio Z, data share W%

``--quick`` is the CPU setting of ``make bench``: small backbone, 32 px views,
batch 64, dali-cpu and ffcv where installed. Without --no-write the table and a
plot go to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from benchmarks.report import bar_plot, environment, write_section
from pipelines import cli
from pipelines.build import LoaderConfig, available, build_loader
from tools import convert_dataset, make_synthetic
from trainer import optim, systems
from trainer.build import build_objective
from trainer.config import Config
from trainer.dist import Env
from trainer.throughput import Trainee, ceiling, end_to_end

# Every step below is the loop's step, its finiteness check included
# (trainer/run.py, --check-finite, the default): trainer/throughput.py.


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.e2e",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="CPU setting: small backbone, 32 px, batch 64, few steps")
    ap.add_argument("--backends", default=None, help="default: every one available but "
                    "torchvision under --quick, every one available otherwise")
    ap.add_argument("--modes", default="eager,compiled")
    ap.add_argument("--method", default="simsiam")
    ap.add_argument("--aux", default="augself")
    ap.add_argument("--backbone", default=None, help="default resnet50 (small with --quick)")
    ap.add_argument("--size", type=int, default=None, help="default 224 (32 with --quick)")
    ap.add_argument("--batch", type=int, default=None, help="default 256 (64 with --quick)")
    ap.add_argument("--source-size", default=None, help="synthetic JPEG size WxH "
                    "(default 500x375; 64x64 with --quick)")
    ap.add_argument("--workers", type=int, default=None, help="loader workers/threads "
                    "(default 16; 2 with --quick)")
    ap.add_argument("--steps", type=int, default=None, help="default 12 (6 with --quick)")
    ap.add_argument("--warmup", type=int, default=None, help="default 4 (3 with --quick)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-write", action="store_true", help="print only")
    cli.add_debug(ap)
    a = ap.parse_args(argv)
    cli.require_positive(ap, a, 'size', 'batch', 'steps', 'repeats')
    q = a.quick
    backbone = a.backbone or ("small" if q else "resnet50")
    size, batch = a.size or (32 if q else 224), a.batch or (64 if q else 256)
    workers, steps = a.workers if a.workers is not None else (2 if q else 16), a.steps or (
        6 if q else 12)
    warmup = a.warmup if a.warmup is not None else (3 if q else 4)
    source = a.source_size or ("64x64" if q else "500x375")
    backends = (a.backends.split(",") if a.backends else
                [b for b in available() if not (q and b == "torchvision")])
    modes = a.modes.split(",")
    if set(modes) - {"eager", "compiled"}:
        ap.error(f"--modes: eager and/or compiled, not {a.modes}")
    sysm = systems.choose(Config(data="-"), Env())
    need = batch * (warmup + steps + 2)  # an epoch per repeat (set_epoch(r)), with slack
    results: dict[tuple[str, str], dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        w, h = (int(x) for x in source.split("x"))
        print(f"generating {need} {source} images ...", file=sys.stderr)
        make_synthetic.generate(tmp / "img", (w, h), need, 0, seed=1, quiet=True)
        beton = [] if "ffcv" in backends else ["--no-beton"]
        if convert_dataset.main([str(tmp / "img"), "--split", "train", "--out",
                                 str(tmp / "conv"), "--quiet", *beton]):
            raise SystemExit("converting the benchmark images failed")
        loaders = {be: build_loader(LoaderConfig(data=str(tmp / "conv"), backend=be,
                                                 size=size, batch_size=batch, workers=workers,
                                                 device=str(sysm.device)), dtype=sysm.dtype)
                   for be in backends}
        recipe = next(iter(loaders.values())).recipe
        for mode in modes:
            cfg = Config(data="-", method=a.method, aux=a.aux, backbone=backbone, size=size,
                         probe=False, compile=mode == "compiled")
            objective = build_objective(cfg, recipe, 0)
            model, objective = systems.prepare(objective, cfg, sysm, Env())
            model.train()
            opt = optim.build(objective.param_groups(), "sgd", 0.05, 0.9, 1e-4)
            fixed = {}
            for be, loader in loaders.items():
                loader.set_epoch(10_000)
                fixed[be] = next(iter(loader))
            for r in range(a.repeats):
                for be, loader in loaders.items():
                    cell = results.setdefault((be, mode), {"e2e": [], "ceiling": [],
                                                           "share": []})
                    t = Trainee(model, objective, opt, sysm)
                    c = ceiling(t, fixed[be], steps, warmup)
                    e, share = end_to_end(t, loader, r, steps, warmup)
                    cell["ceiling"].append(c)
                    cell["e2e"].append(e)
                    cell["share"].append(share)
                    print(f"repeat {r + 1}/{a.repeats} {be} {mode}: e2e {e:.0f} img/s, "
                          f"ceiling {c:.0f} img/s", file=sys.stderr, flush=True)
    lines, rows = [], []
    for (be, mode), cell in results.items():
        e, c = statistics.median(cell["e2e"]), statistics.median(cell["ceiling"])
        ratio = statistics.median(x / y for x, y in zip(cell["e2e"], cell["ceiling"]))
        share = statistics.median(cell["share"])
        lines.append(f"{be} {mode}: e2e {e:.0f} img/s, ceiling {c:.0f} img/s, ratio "
                     f"{ratio:.2f}, data share {100 * share:.1f}%")
        rows.append(f"| {be} | {mode} | {e:.0f} | {c:.0f} | {ratio:.2f} | {100 * share:.1f}% |")
    print("\n".join(lines))
    where = f"{sysm.device.type}, {str(sysm.dtype).removeprefix('torch.')}"
    cmd = " ".join(["python -m benchmarks.e2e", *(argv if argv is not None else sys.argv[1:])])
    body = "\n".join([
        f"## End to end against the model-only ceiling (benchmarks/e2e.py, {sysm.device.type})",
        "", f"{a.method}+{a.aux}, {backbone} at {size} px, batch {batch}, 2 views, {where}; "
        f"{source} synthetic JPEGs, {workers} loader workers/threads; {steps} steps after "
        f"{warmup} warm-up, median of {a.repeats} interleaved repeats (ratio: median of "
        f"per-repeat ratios; data share: host time in the loader's next() over the step).",
        "", "| backend | mode | e2e img/s | ceiling img/s | ratio | data share |",
        "|---|---|---|---|---|---|", *rows, "", f"Command: `{cmd}`", "", environment()])
    if not a.no_write:
        names = [f"{be} {mode}" for (be, mode) in results]
        plot = bar_plot(f"e2e-{sysm.device.type}", names,
                        {"e2e": [statistics.median(c["e2e"]) for c in results.values()],
                         "ceiling": [statistics.median(c["ceiling"]) for c in results.values()]},
                        "images / s", f"End to end vs model only ({where})")
        body += "\n\n" + plot
        write_section(f"e2e-{sysm.device.type}", body)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, "benchmarks.e2e"))
