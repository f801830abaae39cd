"""Who may write into a run folder, and what in it is the trainer's.

A run folder holds what a run wrote (OUTPUTS) and maybe files of the user's
(notes, a config, another tool's output). The rules:

- a new run (no --resume) starts only in a folder that is missing or empty;
  a folder holding a run (any of OUTPUTS: people delete checkpoint.pt to save
  space, so its absence proves nothing) needs --resume or --overwrite, and a
  folder holding only other files needs --overwrite: the message says which;
- --overwrite removes the earlier run's OUTPUTS before anything is written (a
  stale backbone.safetensors or .pt next to a new config.json would be evaluated
  as the new run's) and keeps every other file; a config.json that is not a trainer's
  (a user's own, named so) is refused, since replacing it would lose it;
- one process at a time: rank 0 holds the folder's lock (pipelines/folder_lock.py)
  for the run's lifetime; a second trainer, or tools.evaluate writing into the
  run's eval/, is refused naming the holder's PID.

``check`` has no side effects and runs on every rank before anything is
created; ``claim`` (rank 0) creates the folder, takes the lock, checks again
under it and clears the earlier run for --overwrite.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from pipelines import folder_lock
from pipelines.folder_lock import LOCK_NAME, FolderBusy, FolderLock
from trainer import checkpoint

# Everything trainer.run writes into a run folder (tools.evaluate adds eval/).
OUTPUTS = ("config.json", "metrics.jsonl", checkpoint.NAME, checkpoint.BACKBONE,
           checkpoint.BACKBONE_ST, checkpoint.BACKBONE_INFO, "recipe.json", "tb", "eval",
           "wandb")


def _contents(run_dir: Path) -> list[str]:
    """Entries of the folder, without our lock file and the temporaries of a
    killed run (checkpoint.remove_stale clears those)."""
    if not run_dir.is_dir():
        return []
    return sorted(p.name for p in run_dir.iterdir()
                  if p.name != LOCK_NAME and not checkpoint.is_temporary(p))


def _is_run_config(path: Path) -> bool:
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(doc, dict) and isinstance(doc.get("config"), dict) and "resolved" in doc


def check(run_dir: Path, resume: bool, overwrite: bool, held: bool = False) -> None:
    """Refuse, naming the folder and what to do, a start that would lose or mix
    files; changes nothing. ``held``: the lock is this job's (this process holds it,
    or this is a rank > 0 whose rank 0 may already hold it), so it is not a reason
    to refuse."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"--out {run_dir}: exists and is not a folder; choose another --out")
    busy = None if held else folder_lock.holder(run_dir)
    if busy:
        raise FolderBusy(f"{run_dir} is in use by {busy}; wait for it to finish (or stop it), "
                         "or choose another --out")
    if resume and overwrite:
        raise ValueError("--resume continues the run in --out and --overwrite replaces it; "
                         "give one of them")
    if resume:
        if not (run_dir / checkpoint.NAME).is_file():
            raise FileNotFoundError(f"--resume: {run_dir / checkpoint.NAME} does not exist, "
                                    "so there is nothing to resume (nothing was changed in the "
                                    "folder); start a new run with another --out")
        return
    entries = _contents(run_dir)
    ours = [e for e in entries if e in OUTPUTS
            and (e != "config.json" or _is_run_config(run_dir / e))]
    listed = ", ".join(entries[:3]) + (" ..." if len(entries) > 3 else "")
    if ours and not overwrite:
        resumable = (run_dir / checkpoint.NAME).is_file()
        raise FileExistsError(
            f"{run_dir} already holds a run ({listed}); nothing was changed. "
            + ("Pass --resume to continue it, --overwrite to replace it, "
               if resumable else "Its checkpoint is gone, so it cannot be resumed: pass "
               "--overwrite to replace it, ")
            + "or choose another --out")
    if entries and not overwrite:
        raise FileExistsError(f"{run_dir} is not empty ({listed}) and holds no run; nothing "
                              "was changed. Choose an empty or new --out, or pass --overwrite "
                              "to write the run there (the files there are kept)")
    config = run_dir / "config.json"
    if overwrite and config.exists() and not _is_run_config(config):
        raise FileExistsError(f"--overwrite refused: {config} was not written by trainer.run "
                              "(it is not a run's config), and replacing it would lose it; "
                              "nothing was changed. Move it away or choose another --out")


def claim(run_dir: Path, resume: bool, overwrite: bool) -> FolderLock:
    """Rank 0: create the folder, hold its lock, check again under the lock, clear
    the earlier run's outputs for --overwrite and a killed run's temporaries.
    Returns the held lock (release it when the run ends)."""
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = FolderLock(run_dir, "trainer.run")
    try:
        lock.acquire()
        check(run_dir, resume, overwrite, held=True)
    except BaseException:
        lock.release(unlink=True)
        if created and not any(run_dir.iterdir()):
            run_dir.rmdir()
        raise
    if overwrite:
        for name in OUTPUTS:
            path = run_dir / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
    for p in checkpoint.remove_stale(run_dir):
        print(f"removed a temporary a killed run left behind: {p}", file=sys.stderr)
    return lock
