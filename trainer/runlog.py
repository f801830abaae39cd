"""The run folder's records: config.json (resolved config, git sha, versions),
metrics.jsonl (one JSON object per logged step, passed on to TensorBoard/W&B:
trainer/watch.py), and the progress bar."""

from __future__ import annotations

import json
import math
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from trainer.config import Config, to_dict


def git_sha() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True, timeout=10).stdout
        return (sha + ("-dirty" if dirty.strip() else "")) if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def write_config(run_dir: Path, cfg: Config, resolved: dict, datasets: dict | None = None
                 ) -> None:
    """``resolved``: what "auto" became (backend, preset, device, dtype, world);
    ``datasets``: each dataset's identity by content (trainer/datasets.py), which
    --resume checks. ``overwrite`` describes a command, not the run: it is saved as
    false, so a resumed run never inherits it. Strict JSON: a non-finite value is
    a bug upstream (every option has a finite range), refused here, not written as NaN."""
    from dataclasses import replace
    doc = {"config": to_dict(replace(cfg, overwrite=False)), "resolved": resolved,
           "datasets": datasets or {}, "git_sha": git_sha(),
           "python": sys.version.split()[0], "torch": torch.__version__,
           "host": platform.node(), "written": time.strftime("%Y-%m-%dT%H:%M:%S")}
    from trainer.checkpoint import write_text_atomic
    write_text_atomic(run_dir / "config.json", json.dumps(doc, indent=2, allow_nan=False) + "\n")


class Metrics:
    """Appends to metrics.jsonl; a resumed run first drops lines past its checkpoint
    so the file reads like one uninterrupted run."""

    def __init__(self, run_dir: Path, resume_step: int | None, watch=None):
        self.path, self.watch = run_dir / "metrics.jsonl", watch  # trainer/watch.py
        if resume_step is None:
            self.path.write_text("")
        elif self.path.exists():
            keep = [json.dumps(r) for r in read_metrics(self.path, torn_ok=True)
                    if r.get("step", 0) <= resume_step]
            self.path.write_text("".join(k + "\n" for k in keep))

    def write(self, record: dict) -> None:
        """One strict-JSON line: a non-finite value is written as null."""
        clean = {k: (v if not isinstance(v, float) or math.isfinite(v) else None)
                 for k, v in record.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps(clean, allow_nan=False) + "\n")
        if self.watch is not None:
            self.watch.scalars(clean)


def read_metrics(path: Path, torn_ok: bool = False) -> list[dict]:
    """The records of a metrics.jsonl. A torn last line (a kill mid-write leaves one)
    is dropped with a note when ``torn_ok``; any other line that is not a JSON object
    is a ValueError naming the file and the line."""
    lines = Path(path).read_text(errors="replace").splitlines()
    records = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            if torn_ok and n == len(lines):
                print(f"note: {path}: dropped its torn last line (a killed run leaves one)",
                      file=sys.stderr)
                break
            raise ValueError(f"{path}, line {n}: not a metrics record ({e}); the file was "
                             "edited or damaged: restore it, or delete the line") from None
        records.append(rec)
    return records


def progress_bar(total: int, initial: int, enabled: bool):
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, disable=not enabled, unit="step",
                dynamic_ncols=True, smoothing=0.1, file=sys.stderr)
