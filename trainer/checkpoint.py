"""Atomic checkpoints: written to a temporary file in the run folder, flushed
to disk, then renamed over the previous one, so a kill at any moment leaves
either the old checkpoint or the new one, never a torn file."""

from __future__ import annotations

import os
from pathlib import Path

import torch

NAME = "checkpoint.pt"


def save_atomic(obj, path: Path) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load(run_dir: Path) -> dict | None:
    path = Path(run_dir) / NAME
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a file we did not write, or a different torch
        raise RuntimeError(f"{path}: cannot read the checkpoint ({e})") from None
