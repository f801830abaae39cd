"""One process at a time per output folder: an exclusive ``flock`` on a lock file.

Every tool that writes into a folder (trainer.run into its run folder,
tools.evaluate into RUN/eval, the converter and make_synthetic into --out)
holds ``FOLDER/.augaware.lock`` for as long as it writes. A second process
asking for the same folder is refused at once, before it writes anything, with
the holder's PID and program (written into the lock file). The lock is the
kernel's (``fcntl.flock``): it goes away with the process however the process
ends (SIGKILL, a crash, power loss), so a stale lock file never blocks anyone;
the file itself stays and is reused.

Unlinking a lock file that others may be opening is the classic race (a waiter
locks the old inode while a newcomer creates and locks a new one): ``release``
unlinks only while still holding the lock, and ``acquire`` checks after locking
that the path still names the inode it locked, retrying otherwise.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

LOCK_NAME = ".augaware.lock"


class FolderBusy(RuntimeError):
    """Another process holds the folder; the message names it."""


class FolderLock:
    """``with FolderLock(folder, "trainer.run"):`` holds ``folder`` (which must exist)."""

    def __init__(self, folder: str | os.PathLike, program: str):
        self.folder, self.program = Path(folder), program
        self.path = self.folder / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> FolderLock:
        for _ in range(100):  # retried only when the file was swapped under us
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as e:
                raise OSError(e.errno, f"{self.path}: cannot create the lock file "
                                       f"({e.strerror}); is {self.folder} writable?") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = _read_holder(fd)
                os.close(fd)
                if e.errno in (errno.EAGAIN, errno.EACCES):
                    raise FolderBusy(f"{self.folder} is in use by {holder}; wait for it to "
                                     "finish (or stop it), or choose another folder") from None
                raise OSError(e.errno, f"{self.path}: cannot lock ({e.strerror})") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # released and unlinked between our open and our flock
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {self.program}\n".encode())
            self.fd = fd
            return self
        raise OSError(f"{self.path}: the lock file keeps being replaced; is another program "
                      "removing it?")

    def release(self, unlink: bool = True) -> None:
        """Drop the lock and (``unlink``) remove the file, while still holding it (see
        the module docstring), so a folder keeps no trace of the lock."""
        if self.fd is None:
            return
        if unlink:
            self.path.unlink(missing_ok=True)  # while still holding it: see the docstring
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def holder(folder: str | os.PathLike) -> str | None:
    """Who holds ``folder``'s lock now ("PROGRAM (PID N)"), or None; creates nothing
    (for checks that must not touch the folder)."""
    try:
        fd = os.open(Path(folder) / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return _read_holder(fd)
    finally:
        os.close(fd)  # also drops the shared lock if we got it
    return None


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 256, 0).decode(errors="replace").split()
    except OSError:
        text = []
    if len(text) >= 2 and text[0].isdigit():
        return f"{text[1]} (PID {text[0]})"
    return "another process (PID not yet written)"
