"""Write a tool's outputs under temporary names, move them into place at the end,
and never touch anything the tool did not write.

- Atomic: everything is written into ``OUT/.partial-<pid>/`` and ``commit()``
  moves each entry into ``OUT`` with ``os.replace`` (atomic for files on one
  file system; a directory is swapped with two renames). An interrupted run
  (Ctrl-C, crash, kill -9) never leaves a file under a final name.
- Owned: ``OUT/.augaware-outputs.json`` lists every file and folder the tool
  committed there. ``--overwrite`` replaces an earlier output only when every
  path in OUT is on that list (and the list is this tool's): a folder holding
  anything else (a user's images under ``train/``, another tool's output, an
  output of an earlier version that kept no list) is refused, naming the first
  stranger, and nothing is changed. During a commit the list names both the old
  and the new entries, so a crash mid-commit still leaves every path accounted for.
- One writer: the folder's lock (pipelines/folder_lock.py) is held from the
  first check to the last rename; a second process on the same OUT is refused.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from pipelines.cli import shown
from pipelines.folder_lock import LOCK_NAME, FolderBusy, FolderLock

PARTIAL_PREFIX = ".partial-"
OWNED_LIST = ".augaware-outputs.json"
STAGE_MARK = ".augaware-stage"  # inside a stage: proves a .partial-* folder is ours
_OURS = {LOCK_NAME, OWNED_LIST}


class OutputError(Exception):
    """The output location cannot be used; the message is one line for the user."""


class StagedOutput:
    """Stage outputs named ``owned`` (top-level entries of OUT) and commit them at once.

    ``owned`` lists every top-level name this tool may produce; with ``overwrite``
    those left over from an earlier run but not produced now are removed at
    commit, so OUT never mixes two runs. ``tool`` names the writer in the owned
    list, the lock and messages.
    """

    def __init__(self, out: str | os.PathLike, owned: list[str], overwrite: bool = False,
                 tool: str = "this tool"):
        self.out = Path(out)
        self.owned = list(owned)
        self.overwrite = overwrite
        self.tool = tool
        if self.out.exists() and not self.out.is_dir():
            raise OutputError(f"{self.out}: exists and is not a directory")
        self.stage: Path | None = None
        self.lock: FolderLock | None = None
        self.previous: list[str] = []  # what the owned list named before this run

    # -- what is in OUT ---------------------------------------------------------
    def _entries(self) -> list[str]:
        """Every path under OUT (relative, folders with a trailing '/'), except the
        lock, the owned list and our stages."""
        found = []
        for dirpath, dirnames, filenames in os.walk(self.out):
            rel = Path(dirpath).relative_to(self.out)
            if rel == Path("."):
                dirnames[:] = [d for d in dirnames if not self._is_stage(d)]
                filenames = [f for f in filenames if f not in _OURS]
            found += [f"{(rel / d).as_posix()}/" for d in dirnames]
            found += [(rel / f).as_posix() for f in filenames]
        return sorted(found)

    def _is_stage(self, name: str) -> bool:
        return name.startswith(PARTIAL_PREFIX) and (self.out / name / STAGE_MARK).is_file()

    def _read_owned(self) -> tuple[str | None, set[str]]:
        path = self.out / OWNED_LIST
        if not path.is_file():
            return None, set()
        try:
            doc = json.loads(path.read_text())
            return str(doc["tool"]), set(map(str, doc["entries"]))
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
            return "?", set()

    def _write_owned(self, entries) -> None:
        tmp = self.out / f".{OWNED_LIST}.tmp-{os.getpid()}"
        tmp.write_text(json.dumps({"tool": self.tool, "entries": sorted(entries)}, indent=0))
        os.replace(tmp, self.out / OWNED_LIST)

    def _check_contents(self) -> None:
        entries = self._entries()
        if not entries:
            return
        tool, listed = self._read_owned()
        shown_entries = ", ".join(entries[:3]) + (" ..." if len(entries) > 3 else "")
        if not self.overwrite:
            if tool == self.tool:
                raise OutputError(f"{self.out}: holds an earlier output of {self.tool} "
                                  f"({shown_entries}); pass --overwrite to replace it")
            raise OutputError(f"{self.out}: output folder is not empty ({shown_entries}); "
                              "choose an empty or new folder")
        if tool != self.tool:
            why = ("its list of written files is damaged" if tool == "?" else
                   f"it was written by {tool}" if tool else
                   f"it holds no list of what {self.tool} wrote there ({OWNED_LIST})")
            raise OutputError(f"{self.out}: --overwrite refused: {why}, so its contents "
                              f"({shown_entries}) may not be this tool's; nothing was changed. "
                              "Choose another folder, or remove it yourself")
        strangers = [e for e in entries if e not in listed]
        if strangers:
            raise OutputError(f"{self.out}: --overwrite refused: {shown(strangers[0])} was not "
                              f"written by {self.tool}"
                              + (f" (and {len(strangers) - 1} more)" if len(strangers) > 1
                                 else "")
                              + "; nothing was changed. Move it away or choose another folder")
        self.previous = sorted(listed)

    # -- the staging itself ------------------------------------------------------
    def __enter__(self) -> Path:
        self.created = not self.out.exists()
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"{self.out}: cannot create the folder ({e.strerror or e})") \
                from None
        self.lock = FolderLock(self.out, self.tool)
        try:
            self.lock.acquire()
            self._check_contents()
        except (FolderBusy, OutputError, OSError) as e:
            self._give_up()
            raise OutputError(str(e)) from None
        # Leftovers of killed runs (a stage holds our mark) are never outputs: clear them.
        for stale in self.out.glob(PARTIAL_PREFIX + "*"):
            if self._is_stage(stale.name) and not _pid_alive(stale.name[len(PARTIAL_PREFIX):]):
                shutil.rmtree(stale, ignore_errors=True)
        self.stage = self.out / f"{PARTIAL_PREFIX}{os.getpid()}"
        shutil.rmtree(self.stage, ignore_errors=True)
        self.stage.mkdir()
        (self.stage / STAGE_MARK).write_text(f"{self.tool}\n")
        return self.stage

    def __exit__(self, exc_type, exc, tb) -> None:
        # Success commits explicitly; any exit that reaches here unstaged is an abort.
        if self.stage is not None and self.stage.exists():
            shutil.rmtree(self.stage, ignore_errors=True)
        self._give_up()

    def _give_up(self) -> None:
        """Release the lock; a folder this run created and left empty goes too."""
        empty = self.out.is_dir() and not self._entries() and \
            not (self.out / OWNED_LIST).exists()
        if self.lock is not None:
            self.lock.release(unlink=True)  # unlinked while held: pipelines/folder_lock.py
            self.lock = None
        if self.created and empty:
            try:
                self.out.rmdir()  # a failed run leaves no trace of itself
            except OSError:
                pass  # something appeared meanwhile: it is not ours to remove

    def commit(self, last: str | None = None) -> None:
        """Move every staged entry into OUT; ``last`` (e.g. the manifest) goes last."""
        assert self.stage is not None
        names = sorted(p.name for p in self.stage.iterdir() if p.name != STAGE_MARK)
        unknown = set(names) - set(self.owned)
        assert not unknown, f"staged entries not declared as owned: {unknown}"
        self._check_contents()  # again: a user may have added something meanwhile
        new = [e for e in _walk(self.stage) if e != STAGE_MARK]
        # Before anything moves, the list names old and new: whatever a crash leaves in
        # OUT is on it, so a later --overwrite may replace it.
        self._write_owned(set(self.previous) | set(new))
        if last in names:
            names.remove(last)
            names.append(last)
        if self.overwrite:
            # The old manifest goes first, so that a crash mid-commit never
            # leaves an old manifest describing new files; then stale outputs.
            if last and (self.out / last).exists():
                _remove(self.out / last)
            for name in self.owned:
                if name not in names and (self.out / name).exists():
                    _remove(self.out / name)
        for name in names:
            src, dst = self.stage / name, self.out / name
            if dst.is_dir() and not dst.is_symlink():
                old = self.stage / f".old-{name}"
                os.replace(dst, old)
                os.replace(src, dst)
                shutil.rmtree(old)
            else:
                os.replace(src, dst)
        self._write_owned(new)
        shutil.rmtree(self.stage)
        self.stage = None


def _walk(root: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        out += [f"{(rel / d).as_posix()}/" for d in dirnames]
        out += [(rel / f).as_posix() for f in filenames]
    return sorted(out)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _pid_alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True
