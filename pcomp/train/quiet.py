"""Holding back what native libraries print to stderr when no accelerator is attached."""

from __future__ import annotations

import contextlib
import os
import tempfile


@contextlib.contextmanager
def quiet_stderr():
    """Hold back what native code writes to file descriptor 2 while inside (libtpu's warnings that no TPU is
    attached: TPU_ACCELERATOR_TYPE, worker hostnames; the CUDA plugin's "Could not find cuda drivers");
    yields a list that gets the held-back text. Imports no jax, so `import jax` itself can go inside."""
    held: list[str] = []
    try:
        fd = os.dup(2)
    except OSError:  # no stderr to redirect
        yield held
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield held
        finally:
            os.dup2(fd, 2)
            os.close(fd)
            sink.seek(0)
            held.append(sink.read().decode("utf-8", "replace"))
