"""Errors that the CLI reports as one clear line and a non-zero exit."""


class PcompError(Exception):
    """Base class: bad input from the user (config, data, checkpoint, file)."""


class ConfigError(PcompError):
    """An unknown preset, an unknown override key, a bad value or an impossible mesh."""


class DataError(PcompError):
    """A missing dataset, file or field, or data that cannot be read."""


class CheckpointError(PcompError):
    """A missing, incomplete or mismatched checkpoint."""


class CompressedFormatError(PcompError):
    """A compressed file that is truncated, corrupted, not ours, or made by another M1."""


class DivergenceError(PcompError):
    """Training produced a non-finite loss or gradient norm (nothing non-finite is checkpointed)."""


class PathError(PcompError):
    """A path that cannot be read, written or created: missing, a file where a directory is needed
    (or the reverse), no permission, a full disk."""


def os_error(path, e: OSError, doing: str = "") -> PathError:
    """One line naming `path` (else the error's own file names) for any OSError, to raise in its place:

        except OSError as e:
            raise os_error(workdir, e, "create the work directory") from None

    gives "cannot create the work directory runs/x: it is a file; expected a directory" instead of
    "[Errno 17] File exists: 'runs/x'"; without `doing`, "runs/x: it is a file; expected a directory"."""
    import errno
    import os

    names = list(dict.fromkeys(str(p) for p in (path, e.filename, e.filename2) if p not in (None, "")))
    where = " -> ".join(names) if names else "(unknown path)"
    reason = {
        errno.ENOENT: "no such file or directory",
        errno.EACCES: "permission denied",
        errno.EPERM: "operation not permitted",
        errno.ENOSPC: "no space left on device",
        errno.EDQUOT: "disk quota exceeded",
        errno.EROFS: "read-only file system",
        errno.EISDIR: "it is a directory; expected a file",
        errno.ENOTDIR: "a part of the path is a file, not a directory",
        errno.ENAMETOOLONG: "the path is too long",
    }.get(e.errno)
    if e.errno == errno.EEXIST:
        existing = e.filename if e.filename not in (None, "") else path
        reason = ("it is a file; expected a directory" if existing is not None and os.path.isfile(existing)
                  else "it already exists")
    reason = reason or e.strerror or str(e) or type(e).__name__
    message = f"cannot {doing} {where}: {reason}" if doing else f"{where}: {reason}"
    return PathError(" ".join(message.splitlines()))
