"""Files of a run folder, written so that nothing is lost or planted.

Atomic: every file is written to a temporary name in the run folder, flushed to
disk, then renamed over the previous one, so a kill at any moment leaves either
the old file or the new one, never a torn file; temporaries a killed process
left behind are removed when the next run starts in the folder.

Safe: checkpoints hold tensors and plain containers only and are loaded with
``weights_only=True``: a planted pickle that would run code is refused, named.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch

NAME = "checkpoint.pt"
_TMP = ".tmp-"  # .<name>.tmp-<pid>


def _tmp_for(path: Path) -> Path:
    return path.with_name(f".{path.name}{_TMP}{os.getpid()}")


def write_atomic(path: Path, write) -> None:
    """``write(f)`` fills a binary file object; it lands at ``path`` atomically. On
    an OSError (disk full, permissions) the previous file is kept and the error
    names the file."""
    path = Path(path)
    tmp = _tmp_for(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise OSError(e.errno, f"cannot write {path}: {e.strerror or e} (disk full? "
                               "the previous file, if any, is kept)") from None
    except RuntimeError as e:  # torch.save reports a failed write as RuntimeError
        raise OSError(f"cannot write {path}: {str(e).splitlines()[0]} (disk full? the "
                      "previous file, if any, is kept)") from None
    finally:
        tmp.unlink(missing_ok=True)


def save_atomic(obj, path: Path) -> None:
    write_atomic(path, lambda f: torch.save(obj, f))


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda f: f.write(text.encode()))


def remove_stale(run_dir: Path) -> list[Path]:
    """Delete temporaries (``.<name>.tmp-<pid>``) a killed process left in the run
    folder; returns what was removed."""
    gone = []
    for p in Path(run_dir).glob(f".*{_TMP}*"):
        if p.is_file():
            p.unlink(missing_ok=True)
            gone.append(p)
    return gone


def all_finite(tree) -> bool:
    """Whether every floating tensor in a nested dict/list is finite (one sync)."""
    flags = []

    def walk(x):
        if isinstance(x, torch.Tensor):
            if x.is_floating_point() and x.numel():
                flags.append(torch.isfinite(x).all())
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)

    walk(tree)
    return bool(torch.stack(flags).all()) if flags else True


def load(run_dir: Path) -> dict | None:
    path = Path(run_dir) / NAME
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise RuntimeError(
            f"{path}: refused: it holds Python objects other than tensors and plain "
            "containers, which a checkpoint of this trainer never does (it may have been "
            "planted or written by other code); loading it could run code, so it is not "
            f"loaded. ({str(e).splitlines()[0]})") from None
    except Exception as e:  # truncated, not a torch file, another torch
        raise RuntimeError(f"{path}: cannot read the checkpoint ({e}); remove it to start "
                           "over, or restore a good copy") from None
