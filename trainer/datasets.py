"""A converted dataset as the trainer sees it: what it is (by content, not by path)
and whether its labels fit its class list.

Identity: a resumed run must train on the samples it started with. A path says
nothing about that (a dataset re-converted in place has the same path; an
identical one copied to a cluster's scratch disk has another), so a dataset is
identified by its manifest's content: the SHA-256 of every output file
(``integrity``), of the .beton's tables, the class list and the sample count.
config.json records this at every start; ``--resume`` compares it, so a moved
but identical dataset resumes and one changed in place is refused, saying what
changed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from pipelines.integrity import read_manifest


def identity(data: str | Path) -> dict:
    """What identifies the dataset in ``data``: {"sha256", "samples", "classes",
    "files": {name: sha256}} (``files`` empty for manifests older than tool 1.2,
    whose whole manifest is hashed instead)."""
    manifest = read_manifest(Path(data))
    integrity = manifest.get("integrity") or {}
    files = {name: str(v.get("sha256")) for name, v in sorted(integrity.items())
             if isinstance(v, dict)}
    classes = list(manifest.get("classes") or [])
    samples = (manifest.get("counts") or {}).get("written")
    core = {"files": files, "tables": manifest.get("tables_sha256") or {},
            "classes": classes, "samples": samples}
    if not files:  # before checksums were recorded: the manifest's own bytes
        core["manifest"] = hashlib.sha256((Path(data) / "manifest.json").read_bytes()).hexdigest()
    sha = hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()
    return {"sha256": sha, "samples": samples, "classes": len(classes), "files": files}


def differences(saved: dict, now: dict) -> list[str]:
    """What changed between two identities, in words (empty: the same dataset)."""
    if saved.get("sha256") == now.get("sha256"):
        return []
    said = []
    for key in ("samples", "classes"):
        if saved.get(key) != now.get(key):
            said.append(f"{key} {saved.get(key)} -> {now.get(key)}")
    old, new = saved.get("files") or {}, now.get("files") or {}
    changed = sorted(n for n in set(old) | set(new) if old.get(n) != new.get(n))
    if changed:
        said.append(f"{len(changed)} file(s) differ, e.g. {changed[0]}")
    return said or ["its manifest differs (class names or tables)"]


def check_labels(data: str | Path) -> int:
    """The number of classes; a ValueError naming the manifest when a sample's label
    falls outside its class list (a manifest edited or damaged: a label past the
    list would fail deep inside a loss as "Target 54 is out of bounds")."""
    from pipelines.images import Images

    images = Images(data)
    classes = list(images.manifest.get("classes") or [])
    labels = np.asarray(images.labels)
    if not len(labels):
        return len(classes)
    low, high = int(labels.min()), int(labels.max())
    if classes and (high >= len(classes) or low < 0):
        raise ValueError(f"{Path(data) / 'manifest.json'}: lists {len(classes)} classes but "
                         f"sample labels reach {high if high >= len(classes) else low}; the "
                         "manifest was edited or damaged: re-convert the dataset")
    if not classes and high >= 0:
        raise ValueError(f"{Path(data) / 'manifest.json'}: lists no classes but samples carry "
                         f"labels up to {high}; the manifest was edited or damaged: re-convert "
                         "the dataset")
    return len(classes)
