"""Loader throughput: images/s, each image giving 2 views with all parameters
(preset augself), at 96 px and 224 px output, for every backend available, next
to the torchvision baseline, measured side by side in one run.

    python -m benchmarks.loader [--n-images 1024] [--batch 64] [--repeats 3]

Source: large JPEGs (500x375) made by tools/make_synthetic.py and converted
with the default options (.beton jpg, records with the original JPEG bytes).
Each repeat times every (size, backend) once, in turn, after a warm-up (which
absorbs compilation, worker start-up and the batches a backend holds ready ahead:
2 per DataLoader worker for torchvision, DALI's prefetch queue), so that timing
starts in the steady state; the figure is the median over repeats of images /
wall seconds for --batches-per-run batches, ending in a device synchronisation.
(With 16 workers and a one-batch warm-up, torchvision's 32 batches made ahead
were timed as if free: 80,000 img/s on an H100 machine.) Results go to
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.report import bar_plot, environment, write_section
from pipelines import cli
from pipelines.build import LoaderConfig, available, build_loader
from tools import convert_dataset, make_synthetic


def _warmup_batches(backend: str, workers: int) -> int:
    """Batches to take before timing: the first (start-up) and every batch the
    backend can have made ahead of the consumer."""
    if backend == "torchvision":
        return 1 + 2 * max(workers, 1)  # DataLoader: prefetch_factor 2 per worker
    return 1 + 2  # DALI's prefetch queue (loader_dali.PREFETCH); FFCV's batches ahead


def _time(loader, batches: int, warmup: int) -> float:
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    n = 0
    for _ in range(batches):
        b = next(it)
        n += len(b)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    del it
    return n / dt


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-images", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batches-per-run", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--backends", default=",".join(available()))
    ap.add_argument("--sizes", default="96,224")
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile the torch photometric stage of dali/ffcv (a GPU "
                    "device; on a CPU device they use the numba kernel either way)")
    cli.add_debug(ap)
    a = ap.parse_args(argv)
    cli.require_positive(ap, a, 'n_images', 'batch', 'batches_per_run', 'repeats')
    backends = a.backends.split(",")
    sizes = [int(s) for s in a.sizes.split(",")]
    need = a.batch * (max(_warmup_batches(be, a.workers) for be in backends) + a.batches_per_run)
    if a.n_images < need:  # one epoch must hold the warm-up and the timed batches
        print(f"--n-images {a.n_images} raised to {need}: one epoch must hold the warm-up "
              f"and {a.batches_per_run} timed batches of {a.batch}", file=sys.stderr)
        a.n_images = need
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print(f"generating {a.n_images} 500x375 images ...", file=sys.stderr)
        make_synthetic.generate(tmp / "img", (500, 375), a.n_images, 0, seed=1, quiet=True)
        # A .beton only where FFCV is asked for (and so installed: build_loader checks);
        # most GPU machines have no FFCV, and DALI/torchvision read the records.
        beton = [] if "ffcv" in backends else ["--no-beton"]
        rc = convert_dataset.main([str(tmp / "img"), "--split", "train", "--out",
                                   str(tmp / "conv"), "--quiet", *beton])
        if rc:
            raise SystemExit(f"converting the benchmark images failed (exit {rc})")
        results: dict[tuple[int, str], list[float]] = {}
        loaders = {}
        for size in sizes:
            for be in backends:
                cfg = LoaderConfig(data=str(tmp / "conv"), backend=be, preset="augself",
                                   size=size, batch_size=a.batch, workers=a.workers,
                                   compile=a.compile)
                loaders[size, be] = build_loader(cfg)
        for r in range(a.repeats):
            for size in sizes:
                for be in backends:
                    loader = loaders[size, be]
                    loader.set_epoch(r)
                    ips = _time(loader, a.batches_per_run, _warmup_batches(be, a.workers))
                    results.setdefault((size, be), []).append(ips)
                    print(f"repeat {r} size {size} {be}: {ips:.0f} img/s", file=sys.stderr)
    gpu = torch.cuda.is_available()
    # the last stage each loader actually ran (after the Triton stage's self-check,
    # which falls back to the torch stage): the one the figures are of
    ran = {be: getattr(getattr(loaders[sizes[0], be], "finish", None), "stage", None)
           for be in backends}
    names = {"triton": "one Triton launch per view on the GPU",
             "torch": "batched torch ops" + (", torch.compile" if a.compile else ", eager"),
             "numba": "photometric_cpu.py's numba kernel on the host",
             "done": "the numba kernel inside its decode op"}
    stage = "Photometric stage as run: " + "; ".join(
        f"{be} {'the reference ops per image, in its workers' if be == 'torchvision' else names.get(st, st)}"
        for be, st in ran.items() if st)
    lines = ["## Loader throughput (benchmarks/loader.py)", "",
             f"Images/s, each image decoded once and giving 2 views with every parameter "
             f"(preset `augself`: crop, flip, colour jitter p 0.8, grayscale 0.2, blur p 0.5), "
             f"normalised float32 channels_last on the device. Source: {a.n_images} synthetic "
             f"500x375 JPEGs. Batch {a.batch}, {a.workers} workers/threads, median of "
             f"{a.repeats} repeats of {a.batches_per_run} batches after a warm-up (the batches a "
             f"backend makes ahead: 2 per torchvision worker, 2 for DALI), "
             f"backends interleaved within each repeat. {stage}.", "",
             "| view size | " + " | ".join(backends) + " | best / torchvision |",
             "|---|" + "---|" * (len(backends) + 1)]
    for size in sizes:
        med = {be: statistics.median(results[size, be]) for be in backends}
        base = med.get("torchvision")
        best = max((m, be) for be, m in med.items() if be != "torchvision") \
            if len(med) > 1 else (base, "torchvision")
        ratio = f"{best[0] / base:.2f}x ({best[1]})" if base else "-"
        lines.append(f"| {size} px | " + " | ".join(f"{med[be]:.0f}" for be in backends)
                     + f" | {ratio} |")
    section = "loader" + ("-gpu" if gpu else "") + ("-compile" if a.compile and gpu else "")
    where = ("GPU" if gpu else "CPU") + ", last stage " + \
        ", ".join(sorted({st for be, st in ran.items() if st and be != "torchvision"})
                  or ["reference ops"])
    if not a.no_write:
        plot = bar_plot(section, [f"{s} px" for s in sizes],
                        {be: [statistics.median(results[s, be]) for s in sizes]
                         for be in backends}, "images / s (2 views each)",
                        f"Loader throughput ({where})")
        lines += ["", plot]
    lines += ["", f"Command: `python -m benchmarks.loader --n-images {a.n_images} --batch "
              f"{a.batch} --batches-per-run {a.batches_per_run} --repeats {a.repeats} "
              f"--workers {a.workers} --backends {a.backends} --sizes {a.sizes}"
              f"{' --compile' if a.compile else ''}`", "",
              environment()]
    body = "\n".join(lines)
    print(body)
    if not a.no_write:
        write_section(section, body)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, "benchmarks.loader"))
