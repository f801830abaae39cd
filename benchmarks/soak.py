"""Soak: one long training run, watched from outside. Every minute the
trainer's resident memory (the process and its children: DataLoader workers)
and its throughput over that minute (from metrics.jsonl) are sampled; at the
end the run is stopped with SIGTERM (the preemption path: it must checkpoint
and exit 143) and the figures are printed as a Markdown table.

What it shows: memory that does not grow (a leak in the loader, the metrics,
the checkpoint writer would), throughput that does not decay, and a clean stop
after a long run. Not a test in the default suite (it takes --minutes); the
slow test tests/test_soak.py runs it for 30 minutes.

    python -m benchmarks.soak --minutes 30 --backend dali-cpu
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from pipelines import cli

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Sample:
    minute: float
    rss_mib: float
    images_per_s: float | None
    step: int


def parents() -> dict[int, int]:
    """pid -> parent pid of every process (Linux /proc); processes that end
    while being read are left out."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                out[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return out


def tree_rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` and every descendant, MiB (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for child, ppid in parents().items():
        children.setdefault(ppid, []).append(child)
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])  # kB
        except OSError:
            pass
    return total / 1024


def read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written
            pass
    return out


def rate_between(rows: list[dict], t0_step: int, t1_step: int, seconds: float,
                 batch: int) -> float | None:
    return (t1_step - t0_step) * batch / seconds if t1_step > t0_step else None


def prepare_data(root: Path, n_images: int) -> Path:
    from tools import convert_dataset, make_synthetic
    make_synthetic.generate(root / "images", (64, 64), n_images, 0, seed=3, quiet=True)
    no_beton = [] if importlib.util.find_spec("ffcv") else ["--no-beton"]  # GPU machines
    rc = convert_dataset.main([str(root / "images"), "--split", "train", "--out",
                               str(root / "conv"), "--quiet", *no_beton])
    if rc != 0:
        raise SystemExit("soak: converting the synthetic data failed")
    return root / "conv"


def soak(args) -> tuple[list[Sample], int, str]:
    work = Path(args.work or tempfile.mkdtemp(prefix="soak-"))
    data = Path(args.data) if args.data else prepare_data(work, args.n_images)
    run_dir = work / "run"
    cmd = [sys.executable, "-m", "trainer.run", "--data", str(data), "--out", str(run_dir),
           "--backend", args.backend, "--method", args.method, "--aux", args.aux,
           "--backbone", "small", "--size", str(args.size), "--batch-size", str(args.batch),
           "--epochs", "100000", "--workers", str(args.workers), "--log-every", "20",
           "--ckpt-every", "500", "--device", "cpu", "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    samples: list[Sample] = []
    t0 = time.perf_counter()
    last_step, last_t = 0, t0
    try:
        for minute in range(1, args.minutes + 1):
            while time.perf_counter() - t0 < 60 * minute:
                if proc.poll() is not None:
                    raise SystemExit(f"soak: the run ended early ({proc.returncode}):\n"
                                     + proc.stderr.read()[-2000:])
                time.sleep(1)
            now = time.perf_counter()
            rows = read_metrics(run_dir / "metrics.jsonl")
            step = rows[-1]["step"] if rows else 0
            rate = rate_between(rows, last_step, step, now - last_t, args.batch)
            samples.append(Sample(minute, tree_rss_mib(proc.pid), rate, step))
            s = samples[-1]
            print(f"minute {minute:3d}: RSS {s.rss_mib:7.1f} MiB, step {step:6d}, "
                  f"{rate or 0:7.1f} img/s", flush=True)
            last_step, last_t = step, now
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    return samples, proc.returncode, err.strip().splitlines()[-1] if err.strip() else ""


def summarise(samples: list[Sample], warmup: int = 2) -> dict:
    """RSS growth and throughput drift after ``warmup`` minutes (first and
    last thirds of what is left, medians)."""
    steady = samples[warmup:] if len(samples) > warmup + 2 else samples
    third = max(1, len(steady) // 3)
    head, tail = steady[:third], steady[-third:]
    rate = [s.images_per_s for s in steady if s.images_per_s]
    return {
        "rss_first_mib": statistics.median(s.rss_mib for s in head),
        "rss_last_mib": statistics.median(s.rss_mib for s in tail),
        "rss_max_mib": max(s.rss_mib for s in steady),
        "rate_first": statistics.median(s.images_per_s or 0 for s in head),
        "rate_last": statistics.median(s.images_per_s or 0 for s in tail),
        "rate_min": min(rate) if rate else 0.0,
        "rate_max": max(rate) if rate else 0.0,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--minutes", type=int, default=30, help="how long to train")
    ap.add_argument("--backend", default="dali-cpu")
    ap.add_argument("--method", default="simsiam")
    ap.add_argument("--aux", default="augself")
    ap.add_argument("--size", type=int, default=32, help="view side, pixels")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the trainer")
    ap.add_argument("--n-images", type=int, default=2000, help="synthetic images (no --data)")
    ap.add_argument("--data", default="", help="a converted dataset instead of synthetic data")
    ap.add_argument("--work", default="", help="folder for data and run (default: a temp dir)")
    ap.add_argument("--json", default="", help="also write the samples and summary here")
    cli.add_debug(ap)
    args = ap.parse_args(argv)
    if args.minutes < 1:
        ap.error("--minutes must be at least 1")
    samples, rc, last_line = soak(args)
    summary = summarise(samples)
    print("\n| minute | RSS MiB | step | img/s |\n|---:|---:|---:|---:|")
    for s in samples:
        print(f"| {s.minute:.0f} | {s.rss_mib:.1f} | {s.step} | {s.images_per_s or 0:.1f} |")
    print(f"\nsummary: {json.dumps(summary)}\nexit after SIGTERM: {rc} ({last_line})")
    if args.json:
        Path(args.json).write_text(json.dumps({"samples": [s.__dict__ for s in samples],
                                               "summary": summary, "exit": rc,
                                               "last_line": last_line}, indent=1))
    return 0 if rc == 128 + signal.SIGTERM else 1


if __name__ == "__main__":
    sys.exit(cli.run(main, "benchmarks.soak"))
