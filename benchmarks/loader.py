"""Loader throughput: images/s, each image giving 2 views (preset augself), at
96 px and 224 px output, for every backend available and for two peer pipelines
built as their users build them, measured side by side in one run.

    python -m benchmarks.loader [--n-images 1024] [--batch 64] [--repeats 3]

The project's backends emit every view's parameters; the peers (benchmarks/peers.py)
emit none: ``tv2`` (torchvision.transforms.v2 in DataLoader workers, as lightly's and
AugSelf's code) and ``dali-stock`` (a stock DALI graph as solo-learn builds it). The
headline is the best project backend over each peer; the project's ``torchvision``
backend, which renders every view with the reference ops per image, stays in the
table as the correctness yardstick it is, not as a baseline.
Source: large JPEGs (500x375) made by tools/make_synthetic.py; the backends read them
converted with the default options (.beton jpg, records with the original JPEG
bytes), the peers read and decode the same JPEG files themselves, with the same
worker/thread count and on the device the backends deliver on.
Each repeat times every (size, loader) once, in turn, after a warm-up (which
absorbs compilation, worker start-up and the batches a loader holds ready ahead:
2 per DataLoader worker for torchvision and tv2, DALI's prefetch queue), so that
timing starts in the steady state; the figure is the median over repeats of images /
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

from benchmarks import peers as peer_lib
from benchmarks.report import bar_plot, environment, write_section
from pipelines import cli
from pipelines.build import LoaderConfig, available, build_loader
from tools import convert_dataset, make_synthetic

YARDSTICK = "torchvision"  # the project's reference-rendering backend
_EMPTY = "''"  # --peers '' as the command line shows it


def _warmup_batches(loader: str, workers: int) -> int:
    """Batches to take before timing: the first (start-up) and every batch the
    loader can have made ahead of the consumer."""
    if loader == YARDSTICK or loader.startswith("tv2"):
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


def _peer_lines(sizes, backends, peers, missing, results) -> tuple[list[str], dict]:
    """The lines the benchmark prints per peer and size, and per size the best
    project backend (name, median) and its ratio to each measured peer."""
    med = {k: statistics.median(v) for k, v in results.items()}
    out, best = [], {}
    for size in sizes:
        be = max(backends, key=lambda b: med[size, b])
        ratios = {p: med[size, be] / med[size, p] for p in peers if p not in missing}
        best[size] = (be, med[size, be], ratios)
        for p in peers:
            out.append(f"peer {p}: not installed" if p in missing else
                       f"peer {p}: {med[size, p]:.0f} img/s at {size} px (emits no parameters)")
        if ratios:
            out.append(f"best project backend / peer at {size} px: {be} {med[size, be]:.0f} "
                       "img/s with every parameter = "
                       + ", ".join(f"{r:.2f}x {p}" for p, r in ratios.items()))
    return out, best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-images", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batches-per-run", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--backends", default=",".join(available()))
    ap.add_argument("--peers", default=",".join(peer_lib.PEERS),
                    help="peer pipelines timed next to the backends (benchmarks/peers.py); "
                    "'' for none")
    ap.add_argument("--peer-window", default="users",
                    help="the peers' blur window: 'users' (one size, a tenth of the view side, "
                    "as their users set it: 23 at 224 px) or '3sigma' (2*ceil(3 sigma)+1, the "
                    "backends' own); 'users,3sigma' times each peer with both (the second as "
                    "e.g. 'tv2 (3sigma)'); the first is the headline's")
    ap.add_argument("--sizes", default="96,224")
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile the torch photometric stage of dali/ffcv (a GPU "
                    "device; on a CPU device they use the numba kernel either way)")
    cli.add_debug(ap)
    a = ap.parse_args(argv)
    cli.require_positive(ap, a, 'n_images', 'batch', 'batches_per_run', 'repeats')
    backends = a.backends.split(",")
    names = [p for p in a.peers.split(",") if p]
    unknown = [p for p in names if p not in peer_lib.PEERS]
    if unknown:
        ap.error(f"--peers: unknown {', '.join(unknown)}; choose from {', '.join(peer_lib.PEERS)}")
    windows = a.peer_window.split(",")
    if not windows or set(windows) - {"users", "3sigma"}:
        ap.error(f"--peer-window {a.peer_window!r}: 'users', '3sigma' or both, comma-separated")
    # key -> (peer, blur window): the first window's under the peer's own name
    peer_of = {(p if w == windows[0] else f"{p} ({w})"): (p, w) for w in windows for p in names}
    peers = list(peer_of)
    missing = {k for k, (p, _) in peer_of.items()
               if p == "dali-stock" and not peer_lib.dali_installed()}
    timed = backends + [p for p in peers if p not in missing]
    sizes = [int(s) for s in a.sizes.split(",")]
    need = a.batch * (max(_warmup_batches(k, a.workers) for k in timed) + a.batches_per_run)
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
        files, labels = peer_lib.image_files(tmp / "img" / "train")  # the same JPEGs
        results: dict[tuple[int, str], list[float]] = {}
        loaders = {}
        for size in sizes:
            for be in backends:
                cfg = LoaderConfig(data=str(tmp / "conv"), backend=be, preset="augself",
                                   size=size, batch_size=a.batch, workers=a.workers,
                                   compile=a.compile)
                loaders[size, be] = build_loader(cfg)
            device = loaders[size, backends[0]].device  # where the backends deliver
            for k in peers:
                if k not in missing:
                    loaders[size, k] = peer_lib.build_peer(
                        peer_of[k][0], files, labels, loaders[size, backends[0]].recipe,
                        a.batch, a.workers, device, window=peer_of[k][1])
        for r in range(a.repeats):
            for size in sizes:
                for k in timed:
                    loader = loaders[size, k]
                    loader.set_epoch(r)
                    ips = _time(loader, a.batches_per_run, _warmup_batches(k, a.workers))
                    results.setdefault((size, k), []).append(ips)
                    print(f"repeat {r} size {size} {k}: {ips:.0f} img/s", file=sys.stderr)
    printed, best = _peer_lines(sizes, backends, peers, missing, results)
    a.peer_of = peer_of
    for line in printed:
        print(line)
    body = _section(a, sizes, backends, peers, missing, results, best, loaders)
    print(body)
    if not a.no_write:
        write_section(_section_name(a), body)
    return 0


def _section_name(a) -> str:
    gpu = torch.cuda.is_available()
    return "loader" + ("-gpu" if gpu else "") + ("-compile" if a.compile and gpu else "")


def _section(a, sizes, backends, peers, missing, results, best, loaders) -> str:
    gpu = torch.cuda.is_available()
    med = {k: statistics.median(v) for k, v in results.items()}
    # the last stage each loader actually ran (after the Triton stage's self-check,
    # which falls back to the torch stage): the one the figures are of
    ran = {be: getattr(getattr(loaders[sizes[0], be], "finish", None), "stage", None)
           for be in backends}
    names = {"triton": "one Triton launch per view on the GPU",
             "torch": "batched torch ops" + (", torch.compile" if a.compile else ", eager"),
             "numba": "photometric_cpu.py's numba kernel on the host",
             "done": "the numba kernel inside its decode op"}
    stage = "Photometric stage as run: " + "; ".join(
        f"{be} {'the reference ops per image, in its workers' if be == YARDSTICK else names.get(st, st)}"
        for be, st in ran.items() if st)
    shown = [p for p in peers if p not in missing]
    big = max(sizes)
    be, fig, every = best[big]
    first = {k for k, (_, w) in a.peer_of.items() if w == a.peer_window.split(",")[0]}
    ratios = {k: r for k, r in every.items() if k in first}
    others = {k: r for k, r in every.items() if k not in first}
    lines = ["## Loader throughput (benchmarks/loader.py)", ""]
    if ratios:
        lines += [f"**At {big} px the best backend, {be}, delivers "
                  + " and ".join(f"{r:.2f}x {p}" for p, r in ratios.items())
                  + f"** ({fig:.0f} img/s, every view's parameters included, against "
                  + ", ".join(f"{p} {med[big, p]:.0f}" for p in ratios)
                  + "): the pipelines people train with, measured side by side in this run "
                  "on the same JPEGs and cores; neither peer emits parameters."
                  + (f" Against the {YARDSTICK} yardstick: {fig / med[big, YARDSTICK]:.2f}x."
                     if YARDSTICK in backends and be != YARDSTICK else "")
                  + (" Same run, the peers' blur window set to another width: "
                     + ", ".join(f"{r:.2f}x {k}" for k, r in others.items()) + "."
                     if others else ""), ""]
    lines += [f"Images/s, each image decoded once and giving 2 views (preset `augself`: "
              f"crop scale 0.2-1, flip, colour jitter 0.4/0.4/0.4/0.1 p 0.8, grayscale 0.2, "
              f"blur sigma 0.1-2 p 0.5), normalised float32 on the "
              f"{'GPU' if gpu else 'CPU'}. Source: {a.n_images} synthetic 500x375 JPEGs. "
              f"Batch {a.batch}, {a.workers} workers/threads for every loader, median of "
              f"{a.repeats} repeats of {a.batches_per_run} batches after a warm-up (the "
              f"batches a loader makes ahead: 2 per DataLoader worker, 2 for DALI), loaders "
              f"interleaved within each repeat. {stage}.", "",
              "Peers (benchmarks/peers.py), **which emit no parameters**: `tv2` is "
              "torchvision.transforms.v2 per image in DataLoader workers on "
              "decode_jpeg tensors (lightly's and AugSelf's pipeline); `dali-stock` is a stock "
              "DALI graph as solo-learn builds it (fn.readers.file, one decode "
              f"({'mixed' if gpu else 'cpu'}), random_resized_crop per view, "
              "brightness_contrast + hsv and gaussian_blur under solo-learn's coin-flip mux, "
              "grayscale as hsv saturation 0, crop_mirror_normalize). Their blur window: "
              + ("a tenth of the view side, odd (23 at 224 px, 9 at 96), as their users set it "
                 "(the backends' is 2*ceil(3 sigma)+1, at most 13)" if a.peer_window.startswith("users")
                 else "2*ceil(3 sigma)+1, the backends' own (tv2: 13, its largest)")
              + (" (the columns marked (3sigma): the backends' own window, "
                 "2*ceil(3 sigma)+1: tv2 13, its largest; DALI one per sample)"
                 if "," in a.peer_window else "")
              + f". `{YARDSTICK}` is this project's reference-rendering backend: every view "
              "drawn by the reference ops per image, a correctness yardstick, not a tuned "
              "pipeline.", ""]
    cols = [f"{be} (yardstick)" if be == YARDSTICK else be for be in backends] \
        + [f"{p} (peer)" for p in peers] + [f"best / {p}" for p in shown] \
        + ([f"best / {YARDSTICK}"] if YARDSTICK in backends else [])
    lines += ["| view size | " + " | ".join(cols) + " | best |", "|---|" + "---|" * (len(cols) + 1)]
    for size in sizes:
        be, fig, ratios = best[size]
        cells = [f"{med[size, b]:.0f}" for b in backends] \
            + ["not installed" if p in missing else f"{med[size, p]:.0f}" for p in peers] \
            + [f"{ratios[p]:.2f}x" for p in shown] \
            + ([f"{fig / med[size, YARDSTICK]:.2f}x"] if YARDSTICK in backends else [])
        lines.append(f"| {size} px | " + " | ".join(cells) + f" | {be} |")
    if a.repeats > 1 and shown:
        per = [f"{size} px " + "; ".join(
            f"{best[size][0]} / {p} " + ", ".join(
                f"{x / y:.2f}" for x, y in zip(results[size, best[size][0]], results[size, p]))
            for p in shown) for size in sizes]
        lines += ["", "Per repeat, side by side: " + "; ".join(per) + "."]
    if not a.no_write:
        where = ("GPU" if gpu else "CPU") + ", last stage " + ", ".join(
            sorted({st for b, st in ran.items() if st and b != YARDSTICK}) or ["reference ops"])
        plot = bar_plot(_section_name(a), [f"{s} px" for s in sizes],
                        {k: [med[s, k] for s in sizes] for k in backends + shown},
                        "images / s (2 views each)", f"Loader throughput ({where})")
        lines += ["", plot]
    lines += ["", f"Command: `python -m benchmarks.loader --n-images {a.n_images} --batch "
              f"{a.batch} --batches-per-run {a.batches_per_run} --repeats {a.repeats} "
              f"--workers {a.workers} --backends {a.backends} --peers {a.peers or _EMPTY} "
              f"--peer-window {a.peer_window} --sizes {a.sizes}"
              f"{' --compile' if a.compile else ''}`", "",
              environment()]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(cli.run(main, "benchmarks.loader"))
