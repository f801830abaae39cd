"""Write a tool's outputs under temporary names and move them into place only at the end.

An interrupted run (Ctrl-C, crash, kill -9) never leaves a file under a final
name: everything is written into ``OUT/.partial-<pid>/`` and ``commit()`` moves
each entry into ``OUT`` with ``os.replace`` (atomic for files on one file
system; a directory is swapped with two renames). Anything in ``OUT`` that is
not one of the tool's outputs is left untouched, even with ``--overwrite``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

PARTIAL_PREFIX = ".partial-"


class OutputError(Exception):
    """The output location cannot be used; the message is one line for the user."""


class StagedOutput:
    """Stage outputs named ``owned`` (top-level entries of OUT) and commit them at once.

    ``owned`` lists every name this tool may produce; with ``overwrite`` those
    left over from an earlier run but not produced now are removed at commit,
    so OUT never mixes two runs.
    """

    def __init__(self, out: str | os.PathLike, owned: list[str], overwrite: bool = False):
        self.out = Path(out)
        self.owned = list(owned)
        self.overwrite = overwrite
        if self.out.exists() and not self.out.is_dir():
            raise OutputError(f"{self.out}: exists and is not a directory")
        existing = self._existing_entries()
        if existing and not overwrite:
            shown = ", ".join(sorted(existing)[:3]) + (" ..." if len(existing) > 3 else "")
            raise OutputError(
                f"{self.out}: output directory is not empty ({shown}); "
                "pass --overwrite to replace this tool's outputs there"
            )
        self.stage: Path | None = None

    def _existing_entries(self) -> list[str]:
        if not self.out.is_dir():
            return []
        return [p.name for p in self.out.iterdir() if not p.name.startswith(PARTIAL_PREFIX)]

    def __enter__(self) -> Path:
        self.created = not self.out.exists()
        self.out.mkdir(parents=True, exist_ok=True)
        # Leftovers of killed runs are never final outputs: clear them.
        for stale in self.out.glob(PARTIAL_PREFIX + "*"):
            if not _pid_alive(stale.name[len(PARTIAL_PREFIX):]):
                shutil.rmtree(stale, ignore_errors=True)
        self.stage = self.out / f"{PARTIAL_PREFIX}{os.getpid()}"
        shutil.rmtree(self.stage, ignore_errors=True)
        self.stage.mkdir()
        return self.stage

    def __exit__(self, exc_type, exc, tb) -> None:
        # Success commits explicitly; any exit that reaches here unstaged is an abort.
        if self.stage is not None and self.stage.exists():
            shutil.rmtree(self.stage, ignore_errors=True)
        if self.created and self.out.exists() and not any(self.out.iterdir()):
            self.out.rmdir()  # a failed run leaves no trace of itself

    def commit(self, last: str | None = None) -> None:
        """Move every staged entry into OUT; ``last`` (e.g. the manifest) goes last."""
        assert self.stage is not None
        names = sorted(p.name for p in self.stage.iterdir())
        unknown = set(names) - set(self.owned)
        assert not unknown, f"staged entries not declared as owned: {unknown}"
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
        shutil.rmtree(self.stage)
        self.stage = None


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
