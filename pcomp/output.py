"""Writing an output file so that nothing is lost: the one way every pcomp command writes a file.

`Output(path, force=...)` is claimed before any work is done and written once at the end:

- a new path, or an existing regular file (only with `force`), is written to a unique temporary file in
  the same directory and renamed into place, so an error (disk full included) leaves no partial file
  and the old file stays whole until the new one is complete; without `force` an output that appeared
  in the meantime is not replaced (the rename is the final guard);
- an existing character device or FIFO (`/dev/null`, a named pipe) is opened and written directly, as a
  shell's `> /dev/null` does (only with `force`: it exists); it is never renamed over;
- anything else that exists (a directory, a block device, a socket) is refused.

Claiming checks the directory (it exists, is one, and a temporary file can be created there: a read-only
or missing directory fails before the work, not after it) and takes an exclusive `flock` on
`.NAME.pcomp-lock` beside the output, so a second pcomp writing the same output fails at its start,
not after doing the whole job. The kernel drops a dead process's `flock`, so a stale lock file is
taken over. Errors are `DataError`s, one line naming the path.

Lowest layer (beside `pcomp.errors`): any module may import it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import tempfile
from pathlib import Path

from pcomp.errors import DataError

_WRITTEN_DIRECTLY = {stat.S_IFCHR: "a character device", stat.S_IFIFO: "a FIFO"}
_REFUSED = {stat.S_IFDIR: "a directory", stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}


def _kind(path: Path) -> int | None:
    """The file type (`stat.S_IFMT`) of what `path` names, following symbolic links; None if nothing."""
    try:
        return stat.S_IFMT(os.stat(path).st_mode)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise DataError(f"cannot write {path}: {e.strerror or e}") from None


def check_replaceable(path: str | Path) -> None:
    """DataError if `path` exists and is not a regular file (a device, FIFO, socket, directory): for
    files pcomp renames into place inside a directory it owns (a dataset's shards), where anything
    else is not ours to replace."""
    kind = _kind(Path(path))
    if kind is not None and kind != stat.S_IFREG:
        what = {**_WRITTEN_DIRECTLY, **_REFUSED}.get(kind, "not a regular file")
        raise DataError(f"{path} is {what}, not a file pcomp wrote; move it away and run again")


class Output:
    """One output file: `claim()` at start (or `with Output(...) as out:`), `write(data)` at the end.

    Leaving the `with` block (or `release()`) without `write` removes the temporary file and the lock;
    nothing at `path` changes."""

    def __init__(self, path: str | Path, *, force: bool, flag: str = "--force"):
        self.path = Path(path)
        self.force = force
        self._flag = flag
        self._direct = False  # a character device or FIFO: written in place
        self._fd: int | None = None  # the temporary file's, or the device's
        self._tmp: str | None = None
        self._lock: int | None = None
        self._lock_path = self.path.parent / f".{self.path.name}.pcomp-lock"

    def __enter__(self) -> Output:
        return self.claim()

    def __exit__(self, *exc) -> None:
        self.release()

    def _exists_error(self) -> DataError:
        return DataError(f"output {self.path} already exists; pass {self._flag} to overwrite it")

    def claim(self) -> Output:
        """Check that the output can be written, before the work; see the module docstring. Claiming a
        claimed output does nothing."""
        if self._fd is not None:
            return self
        path, parent = self.path, self.path.parent
        if not parent.is_dir():
            what = "is not a directory" if parent.exists() else "does not exist"
            raise DataError(f"output directory {parent} {what}")
        kind = _kind(path)
        if kind in _REFUSED:
            expected = "; expected a file name" if kind == stat.S_IFDIR else "; pcomp writes files, character devices and FIFOs"
            raise DataError(f"output {path} is {_REFUSED[kind]}{expected}")
        if kind is not None and not self.force:
            if kind in _WRITTEN_DIRECTLY:
                raise DataError(f"output {path} is {_WRITTEN_DIRECTLY[kind]}; pass {self._flag} to write to it")
            raise self._exists_error()
        if kind in _WRITTEN_DIRECTLY:
            self._direct = True
            try:  # a FIFO's open waits for a reader, as a shell's `> fifo` does
                self._fd = os.open(path, os.O_WRONLY)
            except OSError as e:
                raise DataError(f"cannot write {path}: {e.strerror or e}") from None
            return self
        self._take_lock()
        try:
            if not self.force and os.path.lexists(path):  # finished by another process meanwhile
                raise self._exists_error()
            self._fd, self._tmp = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=".tmp")
        except OSError as e:
            self.release()
            raise DataError(f"cannot write {path}: {e.strerror or e}") from None
        except BaseException:
            self.release()
            raise
        return self

    def _take_lock(self) -> None:
        while True:
            try:
                fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise DataError(f"cannot write {self.path}: {e.strerror or e}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise DataError(f"output {self.path} is being written by another pcomp process (pid {holder}); "
                                "wait for it to finish or choose another output") from None
            try:  # the holder we waited on may have removed the file we locked: lock the one there now
                same = os.fstat(fd).st_ino == os.stat(self._lock_path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock = fd

    def write(self, data: bytes) -> None:
        """Write all of `data` to the claimed output and release it; on any error nothing at `path`
        changes (a device or FIFO may have received part of it)."""
        if self._fd is None:
            self.claim()
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
            if self._direct:
                return
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self._tmp, 0o666 & ~umask)  # mkstemp makes it 0600; an output gets the usual permissions
            if self.force:
                if _kind(self.path) not in (None, stat.S_IFREG):  # became a device meanwhile: not ours
                    raise DataError(f"output {self.path} was replaced by something that is not a file while "
                                    "pcomp worked; nothing written")
                os.replace(self._tmp, self.path)
            else:
                _link_new(self._tmp, self.path)
            self._tmp = None
        except FileExistsError:
            raise self._exists_error() from None
        except OSError as e:
            raise DataError(f"cannot write {self.path}: {e.strerror or e}") from None
        finally:
            self.release()

    def release(self) -> None:
        """Close, remove the temporary file (if not renamed into place) and drop the lock."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._tmp)
            self._tmp = None
        if self._lock is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._lock_path)  # still holding the flock: a waiter re-checks the inode
            with contextlib.suppress(OSError):
                os.close(self._lock)
            self._lock = None


def _link_new(tmp: str, path: Path) -> None:
    """Rename tmp to path unless path exists (FileExistsError), without a window where it is overwritten."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:  # no hard links on this file system: check, then rename
        if os.path.lexists(path):
            raise FileExistsError(path) from None
        os.replace(tmp, path)
    else:
        os.unlink(tmp)


def write_file(path: str | Path, data: bytes, *, force: bool = True) -> None:
    """`data` into `path` as `Output` writes it (by default replacing an existing regular file)."""
    Output(path, force=force).write(data)
