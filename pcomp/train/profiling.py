"""A JAX profiler trace of a window of training steps (`training.profile_steps=N,M`).

The trace starts before step N is dispatched and stops once step M's result is ready, so it holds
exactly the device work of those steps (plus whatever the loop does between them: logging,
evaluation, checkpoints). It goes to WORKDIR/profile/plugins/profile/<time>/<host>.xplane.pb (for
TensorBoard's profile plugin / XProf) and <host>.trace.json.gz (Chrome trace format, for Perfetto).
"""

from __future__ import annotations

from pathlib import Path

import jax


class StepProfiler:
    """Traces global steps `window[0]..window[1]` (both included) into `directory`; does nothing
    when `window` is None or not `enabled` (processes other than 0). A run that resumes inside the
    window traces the rest of it; `close` ends a trace the run left open (stop, error, signal)."""

    def __init__(self, window: tuple[int, int] | None, directory: Path, enabled: bool):
        self.window = window if enabled else None
        self.directory = directory
        self.active = False

    def before_step(self, gstep: int) -> None:
        """Call before dispatching global step `gstep`."""
        if self.window and not self.active and self.window[0] <= gstep <= self.window[1]:
            self.directory.mkdir(parents=True, exist_ok=True)
            jax.profiler.start_trace(str(self.directory))
            self.active = True

    def after_step(self, gstep: int, result) -> bool:
        """Call after dispatching global step `gstep` with its outputs; at the window's last step this
        waits for them and writes the trace. True when a trace was written."""
        if self.active and gstep >= self.window[1]:
            jax.block_until_ready(result)
            self.close()
            return True
        return False

    def close(self) -> None:
        if self.active:
            self.active = False
            jax.profiler.stop_trace()
