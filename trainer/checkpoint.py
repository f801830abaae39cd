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
BACKBONE = "backbone.pt"        # the backbone as a plain state_dict (torchvision/timm load it)
BACKBONE_INFO = "backbone.json"  # which step it is, whether the run had finished, its hash
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


def save_backbone(run_dir: Path, state: dict, step: int, finished: bool) -> None:
    """backbone.pt, then backbone.json naming its step and SHA-256. Written with every
    checkpoint, so the backbone always is the checkpoint's it sits next to (a run
    stopped by SIGTERM or a non-finite loss included); evaluation reads the step
    from backbone.json and refuses a pair that does not match (a kill between the
    two renames)."""
    import hashlib
    import io
    import json

    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    write_atomic(Path(run_dir) / BACKBONE, lambda f: f.write(data))
    info = {"step": int(step), "finished": bool(finished), "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest()}
    write_text_atomic(Path(run_dir) / BACKBONE_INFO, json.dumps(info, indent=1) + "\n")


def backbone_info(run_dir: Path) -> dict:
    """{"step", "finished"} of RUN/backbone.pt from backbone.json, checked against the
    file's hash; both None for a run written before backbone.json existed. A
    backbone.json that does not describe backbone.pt is a ValueError naming both."""
    import hashlib
    import json

    run_dir = Path(run_dir)
    path = run_dir / BACKBONE_INFO
    if not path.is_file():
        return {"step": None, "finished": None}
    try:
        info = json.loads(path.read_text())
        step, finished, sha = int(info["step"]), bool(info["finished"]), str(info["sha256"])
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: damaged ({type(e).__name__}: {e}); resume the run to "
                         "write it again") from None
    h = hashlib.sha256()
    with open(run_dir / BACKBONE, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    if h.hexdigest() != sha:
        raise ValueError(f"{run_dir / BACKBONE} is not the backbone {path} describes (step "
                         f"{step}): the run was stopped between writing the two; resume it "
                         f"(python -m trainer.run --out {run_dir} --resume) to write both again")
    return {"step": step, "finished": finished}


def is_temporary(path: Path) -> bool:
    """A temporary of write_atomic (``.<name>.tmp-<pid>``)."""
    return path.name.startswith(".") and _TMP in path.name and path.is_file()


def remove_stale(run_dir: Path) -> list[Path]:
    """Delete temporaries (``.<name>.tmp-<pid>``) a killed process left in the run
    folder; returns what was removed."""
    gone = []
    for p in Path(run_dir).glob(f".*{_TMP}*"):
        if is_temporary(p):
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
