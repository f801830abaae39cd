"""Conversion throughput: the CIFAR-10 train split (50,000 JPEGs from ../shared/data)
to records and a .beton, both outputs, as the converter runs by default.

    python -m benchmarks.convert [--tarball PATH] [--repeats 3] [--write-mode jpg]

Prints images/s per phase (decode + records, .beton) and overall, the median of
--repeats runs, and writes them to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from benchmarks.report import environment, write_section
from pipelines import cli

DEFAULT_TARBALL = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tarball", type=Path, default=DEFAULT_TARBALL)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--write-mode", default="jpg")
    cli.add_debug(p)
    a = p.parse_args(argv)
    cli.require_positive(p, a, 'repeats')
    if not a.tarball.exists():
        print(f"benchmarks.convert: error: {a.tarball} not found", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with tarfile.open(a.tarball) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith("cifar10/train/")]
            tar.extractall(tmp, members=members, filter="data")
        rows = []
        for r in range(a.repeats):
            out = tmp / f"out{r}"
            cmd = [sys.executable, "-m", "tools.convert_dataset", str(tmp / "cifar10"),
                   "--split", "train", "--out", str(out), "--write-mode", a.write_mode,
                   "--quiet"]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, cwd=Path(__file__).resolve().parents[1])
            wall = time.perf_counter() - t0
            m = json.loads((out / "manifest.json").read_text())
            n, s = m["counts"]["written"], m["seconds"]
            rows.append((n / s["decode_and_records"], n / s["beton"],
                         n / (s["decode_and_records"] + s["beton"]), n / wall))
            print(f"run {r}: {n} images; decode+records {rows[-1][0]:.0f} img/s, "
                  f".beton {rows[-1][1]:.0f} img/s, both {rows[-1][2]:.0f} img/s, "
                  f"wall incl. start-up {rows[-1][3]:.0f} img/s")
    med = [statistics.median(col) for col in zip(*rows)]
    body = (
        "## Dataset conversion (tools/convert_dataset.py)\n\n"
        f"CIFAR-10 train split, {n} JPEGs (32x32) from `../shared/data`, both outputs "
        f"(records + .beton, write mode `{a.write_mode}`), default workers. Median of "
        f"{a.repeats} runs.\n\n"
        "| phase | images/s |\n|---|---|\n"
        f"| decode + validate + WebDataset records (+ DALI index) | {med[0]:.0f} |\n"
        f"| .beton (FFCV DatasetWriter) | {med[1]:.0f} |\n"
        f"| both phases | {med[2]:.0f} |\n"
        f"| wall clock, including interpreter and FFCV import | {med[3]:.0f} |\n\n"
        f"Command: `python -m benchmarks.convert --repeats {a.repeats} "
        f"--write-mode {a.write_mode}` (or `make bench`).\n\n{environment()}\n")
    write_section("convert", body)
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, "benchmarks.convert"))
