"""Integrity of a converted dataset: the manifest records the size and SHA-256
of every file the readers open (records shards and their .idx, data.beton);
readers check sizes at start (cheap: a truncated or replaced file is named
before any batch), ``verify`` checks the hashes too (reads every byte).

Manifests written before the converter recorded this (tool version < 1.2)
carry no ``integrity`` key: nothing to check, and nothing is claimed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def describe(path: Path) -> dict:
    """{"bytes", "sha256"} of one file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"bytes": Path(path).stat().st_size, "sha256": h.hexdigest()}


def check_sizes(data_dir: Path, manifest: dict, names: list[str]) -> None:
    """Raise ValueError naming the first of ``names`` (relative to ``data_dir``)
    that is missing or whose size differs from the manifest's."""
    known = manifest.get("integrity") or {}
    for name in names:
        want = known.get(name)
        if want is None:
            continue
        path = Path(data_dir) / name
        if not path.is_file():
            raise ValueError(f"{path}: missing (the manifest lists it); re-convert the "
                             "dataset or restore the file")
        size = path.stat().st_size
        if size != want["bytes"]:
            raise ValueError(f"{path}: {size} bytes, the manifest says {want['bytes']}: the "
                             "file is truncated or was replaced; re-convert the dataset or "
                             "restore the file")


def verify(data_dir: Path, manifest: dict) -> list[str]:
    """Every recorded file's size and hash; returns the problems (empty: all good)."""
    problems = []
    for name, want in (manifest.get("integrity") or {}).items():
        path = Path(data_dir) / name
        if not path.is_file():
            problems.append(f"{path}: missing")
            continue
        got = describe(path)
        if got != want:
            problems.append(f"{path}: {got['bytes']} bytes sha256 {got['sha256'][:12]}..., "
                            f"the manifest says {want['bytes']} bytes sha256 "
                            f"{want['sha256'][:12]}...")
    return problems


def read_manifest(data_dir: Path) -> dict:
    """DIR/manifest.json as a dict; a missing or damaged one is named."""
    import json

    path = Path(data_dir) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; is {data_dir} a converted dataset "
                                "(tools/convert_dataset.py)?")
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{path}: not valid JSON ({e}); the file is damaged: re-convert the "
                         "dataset or restore it") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("outputs"), dict):
        raise ValueError(f"{path}: not a manifest written by tools/convert_dataset.py; "
                         "re-convert the dataset")
    return manifest
