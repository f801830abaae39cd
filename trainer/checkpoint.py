"""Files of a run folder, written so that nothing is lost or planted.

Atomic: every file is written to a temporary name in the run folder, flushed to
disk, then renamed over the previous one, so a kill at any moment leaves either
the old file or the new one, never a torn file; temporaries a killed process
left behind are removed when the next run starts in the folder.

Safe: checkpoints hold tensors and plain containers only and are loaded with
``weights_only=True``: a planted pickle that would run code is refused, named.

Described: the backbone is written twice with every checkpoint, as backbone.pt (a
torch state_dict) and backbone.safetensors (the same tensors, no pickle at all),
then backbone.json records the step and each file's SHA-256; a backbone file it
does not describe (a kill between the renames, a file copied in from another
run, a truncated copy) is refused, named, before anything loads it.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import torch
from safetensors.torch import load as _load_safetensors
from safetensors.torch import save as _save_safetensors

NAME = "checkpoint.pt"
BACKBONE = "backbone.pt"        # the backbone as a plain state_dict (torchvision/timm load it)
BACKBONE_ST = "backbone.safetensors"  # the same tensors as safetensors (no pickle)
BACKBONE_INFO = "backbone.json"  # which step they are, whether the run had finished, hashes
BACKBONE_FILES = (BACKBONE_ST, BACKBONE)  # what evaluation loads, the first one present
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


def _safetensors_bytes(state: dict, step: int) -> bytes:
    """``state`` in the safetensors format: each tensor copied to its own contiguous
    CPU storage (safetensors refuses tensors that share storage, as tied weights or
    views of one buffer do, and non-contiguous ones, as channels_last weights are);
    the metadata says ``format: pt`` (what timm and transformers expect) and the step."""
    flat = {}
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"backbone state {k!r} is a {type(v).__name__}, not a tensor")
        flat[k] = v.detach().to("cpu").clone(memory_format=torch.contiguous_format)
    return _save_safetensors(flat, metadata={"format": "pt", "step": str(int(step))})


def save_backbone(run_dir: Path, state: dict, step: int, finished: bool) -> None:
    """backbone.pt and backbone.safetensors (the same tensors), then backbone.json
    naming their step and each one's SHA-256. Written with every checkpoint, so the
    backbone always is the checkpoint's it sits next to (a run stopped by SIGTERM or
    a non-finite loss included); evaluation reads the step from backbone.json and
    refuses a file it does not describe (a kill between the renames)."""
    import hashlib
    import json

    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    st = _safetensors_bytes(state, step)  # before anything is written: a refusal changes nothing
    write_atomic(Path(run_dir) / BACKBONE, lambda f: f.write(data))
    write_atomic(Path(run_dir) / BACKBONE_ST, lambda f: f.write(st))
    info = {"step": int(step), "finished": bool(finished), "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "safetensors": {"bytes": len(st), "sha256": hashlib.sha256(st).hexdigest()}}
    write_text_atomic(Path(run_dir) / BACKBONE_INFO, json.dumps(info, indent=1) + "\n")


def backbone_path(run_dir: Path) -> Path | None:
    """The backbone file evaluation loads: backbone.safetensors where there is one
    (no pickle at all), else backbone.pt (a run of a version before safetensors, or a
    folder whose .safetensors was deleted); None where there is neither."""
    return next((Path(run_dir) / n for n in BACKBONE_FILES if (Path(run_dir) / n).is_file()),
                None)


def _checked(run_dir: Path, keep: str | None = None) -> tuple[dict, bytes | None]:
    """backbone_info's {"step", "finished"}, every backbone file in the folder checked
    against backbone.json, and the bytes of the file named ``keep`` (the ones hashed:
    what is loaded is what was checked)."""
    import hashlib
    import json

    run_dir = Path(run_dir)
    path = run_dir / BACKBONE_INFO
    present = [n for n in (BACKBONE, BACKBONE_ST) if (run_dir / n).is_file()]
    if not present:
        raise FileNotFoundError(f"{run_dir / BACKBONE_ST}: missing, and so is {BACKBONE}: "
                                f"{run_dir} holds no backbone")
    kept = None
    if not path.is_file():  # a run of a version before backbone.json: backbone.pt only
        if BACKBONE_ST in present:
            raise ValueError(f"{run_dir / BACKBONE_ST}: no {path} describes it (the trainer "
                             "writes the two together), so it may be another run's; it is not "
                             f"loaded: remove it (or restore {BACKBONE_INFO})")
        if keep is not None:
            kept = (run_dir / keep).read_bytes()
        return {"step": None, "finished": None}, kept
    try:
        info = json.loads(path.read_text())
        step, finished, sha = int(info["step"]), bool(info["finished"]), str(info["sha256"])
        st = info.get("safetensors")  # absent: written before backbone.safetensors existed
        st_sha = None if st is None else str(st["sha256"])
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: damaged ({type(e).__name__}: {e}); resume the run to "
                         "write it again") from None
    for name in present:
        file = run_dir / name
        want = sha if name == BACKBONE else st_sha
        if want is None:
            raise ValueError(f"{file}: {path} does not describe it (that backbone.json was "
                             f"written before the trainer wrote {BACKBONE_ST}), so it may be "
                             f"another run's; it is not loaded: remove it to use {BACKBONE}")
        h = hashlib.sha256()
        if name == keep:
            kept = file.read_bytes()
            h.update(kept)
        else:
            with open(file, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        if h.hexdigest() != want:
            raise ValueError(f"{file} is not the backbone {path} describes (step {step}): "
                             "the run was stopped between writing them, or the file was "
                             f"replaced or cut short; resume the run (python -m trainer.run "
                             f"--out {run_dir} --resume) to write them again")
    return {"step": step, "finished": finished}, kept


def backbone_info(run_dir: Path) -> dict:
    """{"step", "finished"} of RUN's backbone from backbone.json, every backbone file
    there (backbone.pt, backbone.safetensors) checked against the hash it records;
    both None for a run written before backbone.json existed. A file backbone.json
    does not describe is a ValueError naming the file and backbone.json."""
    return _checked(run_dir)[0]


def load_backbone_state(run_dir: Path) -> tuple[dict, Path]:
    """(state_dict, the file it came from): backbone_path's file, after backbone_info's
    checks, parsed from the very bytes that were hashed; backbone.pt with
    ``weights_only=True``. A file that cannot be read is a ValueError naming it."""
    path = backbone_path(run_dir)
    _, data = _checked(run_dir, keep=None if path is None else path.name)
    try:
        if path.name == BACKBONE_ST:
            state = _load_safetensors(data)
        else:
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated, not this format, a planted pickle
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"{path}: cannot read the backbone ({type(e).__name__}: {first}); "
                         "resume the run to write it again") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise ValueError(f"{path}: not a state_dict of tensors; it is not loaded")
    return state, path


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
