"""Check a converted dataset against its manifest, reading every byte.

    python -m tools.verify_dataset DIR

Checks the size and SHA-256 of every file the manifest lists (shards, their
.idx, data.beton, the checksum files); where a file differs, the CRC-32 of each
of its samples (pipelines/checks.py) names the damaged ones.
Exit status 0 when everything matches, 1 when something does not (the list is
printed), 2 for bad arguments. Loaders check sizes and per-sample checksums as
they read; this reads everything at once, e.g. after copying a dataset to a
cluster's scratch disk.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipelines import checks, cli
from pipelines.integrity import read_manifest, verify


def damaged_samples(data_dir: Path, manifest: dict, progress: bool) -> list[str]:
    """One line per sample whose bytes fail their checksum, records and .beton."""
    problems = []
    if manifest["outputs"].get("records"):
        from pipelines.records import Records
        rec = Records(data_dir)
        if rec.crcs is not None:
            ids = np.arange(len(rec))
            for start in tqdm(range(0, len(rec), 1024), disable=not progress, unit="batch",
                              desc="records samples"):
                chunk = ids[start:start + 1024]
                problems += [f"{rec.where(i)}: checksum mismatch"
                             for i in chunk[rec.damaged(chunk)]]
    beton = data_dir / "data.beton"
    if manifest["outputs"].get("beton") and (data_dir / checks.BETON_CHECKS).is_file():
        want = checks.load(data_dir, manifest, checks.BETON_CHECKS,
                           (data_dir / checks.BETON_CHECKS).stat().st_size // 4)
        got, tables = checks.beton_crcs(beton)
        if tables != (manifest.get("tables_sha256") or {}).get("data.beton", tables):
            problems.append(f"{beton}: its sample tables differ from the manifest's")
        elif want is not None:
            problems += [f"sample {i} ({beton}): checksum mismatch"
                         for i in np.flatnonzero(got != want)]
    return problems


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="verify_dataset", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("data", help="a converted dataset folder (tools/convert_dataset.py output)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    cli.add_debug(p)
    a = p.parse_args(argv)
    data_dir = Path(a.data)
    manifest = read_manifest(data_dir)
    if not manifest.get("integrity"):
        print(f"{data_dir}: converted by tool version {manifest.get('tool_version', '?')}, "
              "before the manifest recorded checksums: nothing to verify; re-convert",
              file=sys.stderr)
        return 1
    problems = verify(data_dir, manifest)
    if problems:  # a file differs: name the samples in it that are damaged
        try:
            problems += damaged_samples(data_dir, manifest, not a.quiet)
        except ValueError as e:  # e.g. a truncated shard: no sample can be located
            problems.append(f"per-sample checks not possible: {e}")
    for line in problems:
        print(f"problem: {line}", file=sys.stderr)
    n = len(manifest["integrity"])
    print(f"{data_dir}: {n} files" + (" and every sample match the manifest" if not problems
                                      else f": {len(problems)} problems"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(cli.run(main, "verify_dataset"))
