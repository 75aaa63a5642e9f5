"""One run per work directory: an exclusive `flock` on WORKDIR/.lock held for the whole run.

The kernel releases a `flock` when its process dies, however it dies, so a crashed run's lock is
stale by construction and the next run takes it over; a live run's lock makes a second
`pcomp train` on the same directory fail at once with the holder's pid, before it writes anything.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from pcomp.errors import CheckpointError


class WorkdirLock:
    """Context manager: `with WorkdirLock(workdir): ...` (creates the directory)."""

    def __init__(self, workdir: str | Path):
        self.path = Path(workdir) / ".lock"
        self._fd: int | None = None

    def __enter__(self) -> WorkdirLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise CheckpointError(
                f"work directory {self.path.parent} is in use by another pcomp run (pid {holder}); wait for it "
                f"to finish or use another training.workdir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
