"""Graceful stop on SIGTERM (spot preemption, TPU maintenance) and SIGINT (Ctrl-C).

The first signal only sets a flag: the trainer finishes the step in flight, writes a checkpoint and
returns (the CLI then exits 0 after SIGTERM, 130 after SIGINT). Raising from the handler instead
could interrupt JAX or grain inside C++ or a worker thread, which is how a plain KeyboardInterrupt
crashed runs. A second signal exits the process at once with 128 + signum; orbax writes each
checkpoint to a temporary directory and renames it when complete, so the last finished checkpoint
stays intact.
"""

from __future__ import annotations

import os
import signal
import sys
import threading


class StopSignals:
    """Context manager installing the handlers (main thread only; elsewhere it does nothing)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def name(self) -> str | None:
        return signal.Signals(self.received).name if self.received else None

    def _handle(self, signum, frame) -> None:
        if self.received is not None:  # the second signal: leave now
            print(f"pcomp: {signal.Signals(signum).name} again: exiting without saving", file=sys.stderr,
                  flush=True)
            os._exit(128 + signum)
        self.received = signum
        print(f"pcomp: {signal.Signals(signum).name}: finishing this step and saving a checkpoint "
              "(send it again to exit at once)", file=sys.stderr, flush=True)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
