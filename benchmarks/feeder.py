"""The DALI feeder's share of the training thread: main-thread CPU time per batch
spent in the external source's callback, before (READ_AHEAD 0: the synchronous
feeder, which reads, checksums and draws boxes in the callback, as the code did
before read-ahead) and after (the read-ahead threads of pipelines/readahead.py),
side by side in one process.

    python -m benchmarks.feeder [--n-images 1024] [--batch 256] [--repeats 4]

Source: ImageNet-size JPEGs, 500x375, a smooth colour field plus noise saved at
quality 90 (~100 KB each), converted with tools/convert_dataset.py (records
only). Loader: dali-cpu, preset augself at 64 px (the view size does not touch
the feeder). DALI calls the callback in the thread that calls ``pipe.run()``;
here that is the main thread iterating the loader, as in the trainer.
Per callback: ``time.thread_time()`` of the main thread (CPU, not waiting) and
the wall time it spent in it; per prepared batch, the CPU time of whichever
thread prepared it (the work moved, it did not vanish). Each repeat iterates one
epoch of each loader in turn; the first epoch of each (numba compilation, first
touch of the memory maps) is a warm-up and not counted. Figures are medians over
the counted batches. Without --no-write the table goes to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.report import environment, write_section
from pipelines import cli, loader_dali
from pipelines.build import LoaderConfig, build_loader
from tools import convert_dataset


def make_images(root: Path, n: int, seed: int = 0) -> float:
    """n 500x375 JPEGs under root/train/x/; returns their mean size in KB."""
    from PIL import Image

    out = root / "train" / "x"
    out.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:375, 0:500] / 500.0
    total = 0
    for i in range(n):
        a, b, c = rng.uniform(0, 6, 3)
        field = np.stack([np.sin(a * xx + b * yy + c + k) for k in range(3)], -1) * 80 + 128
        # noise std 24 levels at quality 90: ~100 KB, the size of an ImageNet JPEG
        img = np.clip(field + rng.normal(0, 24, field.shape), 0, 255).astype(np.uint8)
        path = out / f"{i:05d}.jpg"
        Image.fromarray(img).save(path, quality=90)
        total += path.stat().st_size
    return total / n / 1e3


class Meter:
    """Wraps _Feeder.__call__ and _Feeder.prepare (class-wide) to time them."""

    def __init__(self):
        self.main = threading.main_thread()
        self.calls: dict[int, list[tuple[float, float]]] = {}   # feeder id -> (cpu, wall)
        self.prepared: dict[int, list[tuple[float, bool]]] = {}  # -> (cpu, on main)
        self.counting = False
        call, prepare = loader_dali._Feeder.__call__, loader_dali._Feeder.prepare
        meter = self

        def timed_call(feeder):
            c0, w0 = time.thread_time(), time.perf_counter()
            out = call(feeder)
            if meter.counting and threading.current_thread() is meter.main:
                meter.calls.setdefault(id(feeder), []).append(
                    (time.thread_time() - c0, time.perf_counter() - w0))
            return out

        def timed_prepare(feeder, at):
            c0 = time.thread_time()
            out = prepare(feeder, at)
            if meter.counting:
                meter.prepared.setdefault(id(feeder), []).append(
                    (time.thread_time() - c0, threading.current_thread() is meter.main))
            return out

        loader_dali._Feeder.__call__ = timed_call
        loader_dali._Feeder.prepare = timed_prepare


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.feeder",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-images", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=4, help="counted epochs per loader")
    ap.add_argument("--threads", type=int, default=2, help="DALI's threads")
    ap.add_argument("--no-write", action="store_true", help="print only")
    cli.add_debug(ap)
    a = ap.parse_args(argv)
    cli.require_positive(ap, a, "n_images", "batch", "repeats", "threads")
    if a.n_images < a.batch:
        ap.error(f"--n-images {a.n_images} is less than one batch of {a.batch}")
    meter = Meter()
    modes = {"before (READ_AHEAD 0, synchronous)": 0,
             f"after (READ_AHEAD {loader_dali.READ_AHEAD}, "
             f"{loader_dali.READ_THREADS} threads)": loader_dali.READ_AHEAD}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print(f"writing {a.n_images} 500x375 JPEGs ...", file=sys.stderr)
        kb = make_images(tmp / "img", a.n_images)
        rc = convert_dataset.main([str(tmp / "img"), "--split", "train", "--out",
                                   str(tmp / "conv"), "--quiet", "--no-beton"])
        if rc:
            raise SystemExit(f"converting the benchmark images failed (exit {rc})")
        loaders = {}
        for name, depth in modes.items():
            loader_dali.READ_AHEAD = depth  # read when the feeder is built
            loaders[name] = build_loader(LoaderConfig(
                data=str(tmp / "conv"), backend="dali-cpu", preset="augself", size=64,
                small_size=32, batch_size=a.batch, workers=a.threads, device="cpu"))
        for r in range(a.repeats + 1):
            meter.counting = r > 0
            for name, loader in loaders.items():
                loader.set_epoch(r)
                t0 = time.perf_counter()
                n = sum(len(b) for b in loader)
                print(f"epoch {r} {name}: {n / (time.perf_counter() - t0):.0f} img/s"
                      f"{'' if r else ' (warm-up)'}", file=sys.stderr)
        rows = []
        for name, loader in loaders.items():
            calls = meter.calls[id(loader.feeder)]
            prepared = meter.prepared[id(loader.feeder)]
            rows.append((name, len(calls),
                         1e3 * statistics.median(c for c, _ in calls),
                         1e3 * max(c for c, _ in calls),
                         1e3 * statistics.median(w for _, w in calls),
                         1e3 * statistics.median(c for c, _ in prepared),
                         sum(m for _, m in prepared), len(prepared)))
    lines = ["## DALI feeder: the training thread's share (benchmarks/feeder.py)", "",
             f"dali-cpu, batch {a.batch} of 500x375 JPEGs (mean {kb:.0f} KB, quality 90, "
             f"{a.n_images} images, records with per-sample CRC-32), {a.threads} DALI "
             f"threads; {a.repeats} epochs per loader after a warm-up epoch, the two loaders "
             "interleaved epoch by epoch in one process. Main-thread CPU: "
             "`time.thread_time()` in the external source's callback, which DALI runs in "
             "the thread that calls `pipe.run()` (the training loop). Prepare CPU: the "
             "same batch's reads, checksums and boxes, in whichever thread ran them.", "",
             "| feeder | callbacks | main-thread CPU / batch, median (max) | "
             "main thread in callback, wall, median | prepare CPU / batch, median | "
             "prepared on the main thread |",
             "|---|---|---|---|---|---|"]
    for name, n, cpu, worst, wall, prep, on_main, n_prep in rows:
        lines.append(f"| {name} | {n} | {cpu:.2f} ms ({worst:.2f}) | {wall:.2f} ms | "
                     f"{prep:.2f} ms | {on_main} of {n_prep} |")
    lines += ["", f"Command: `python -m benchmarks.feeder --n-images {a.n_images} --batch "
              f"{a.batch} --repeats {a.repeats} --threads {a.threads}`", "", environment()]
    body = "\n".join(lines)
    print(body)
    if not a.no_write:
        write_section("feeder", body)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, "benchmarks.feeder"))
