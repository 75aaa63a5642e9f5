"""orbax checkpoints of the whole run: train state, grain iterator state and run position.

A checkpoint holds three items: `state` (params, optimizer, step, rng as sharded arrays), `data`
(the grain iterator, one JSON per process) and `meta` (stage, steps and tokens so far). The last
`keep` are kept; `latest()` finds where to resume. `meta` also records the checkpoint's format
(`CHECKPOINT_FORMAT`); reading a checkpoint of another format is a one-line CheckpointError.
"""

from __future__ import annotations

import errno
import logging
from pathlib import Path

import jax
import orbax.checkpoint as ocp
from grain.checkpoint import CheckpointRestore, CheckpointSave

from pcomp.errors import CheckpointError

# Bump when the train state's layout changes: a checkpoint of another format cannot be restored.
# 1 (unrecorded): one parameter per block and layer; 2: the blocks stacked along a leading layers axis.
CHECKPOINT_FORMAT = 2
_FORMATS = {1: "one set of parameters per layer", 2: "the layers' parameters stacked, under nnx.scan"}


class _OrbaxFailureFilter(logging.Filter):
    """Drops orbax's background-thread error logs (each with a full traceback, hundreds of lines on
    a full disk); the failure reaches the user once, as the `CheckpointError` raised by
    `Checkpointer.save` / `wait`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        return "orbax" not in record.pathname and "orbax" not in record.getMessage()


def _install_filter() -> None:
    for name in ("absl", "asyncio"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _OrbaxFailureFilter) for f in logger.filters):
            logger.addFilter(_OrbaxFailureFilter())


class Checkpointer:
    def __init__(self, directory: str | Path, keep: int):
        _install_filter()
        directory = str(directory)
        self.directory = directory if "://" in directory else Path(directory).absolute()
        self._mngr = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
            item_names=("state", "data", "meta"),
        )

    def latest(self) -> int | None:
        return self._mngr.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._mngr.all_steps())

    def save(self, step: int, state, data_iterator, meta: dict) -> None:
        """Start writing checkpoint `step` (asynchronously); an earlier write's failure surfaces here."""
        try:
            self._mngr.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state),
                    data=CheckpointSave(data_iterator),
                    meta=ocp.args.JsonSave({**meta, "format": CHECKPOINT_FORMAT}),
                ),
                force=True,
            )
        except (OSError, ValueError, RuntimeError) as e:
            raise self._write_error(step, e) from None

    def _write_error(self, step: int, e: Exception) -> CheckpointError:
        text = str(e)
        if getattr(e, "errno", None) == errno.ENOSPC or "RESOURCE_EXHAUSTED" in text or "No space left" in text:
            reason = "no space left on device"
        else:
            reason = (text.splitlines() or [type(e).__name__])[0][:300]
        last = self.latest()
        return CheckpointError(
            f"cannot write a checkpoint (step {step}) to {self.directory}: {reason}"
            + (f"; the last complete checkpoint is step {last}" if last is not None else "")
        )

    def restore(self, step: int, abstract_state, data_iterator):
        """Returns (state, meta); `data_iterator` is advanced in place to the saved position."""
        self.restore_meta(step)  # the format first: another layout fails clearly, not inside orbax
        try:
            out = self._mngr.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state),
                    data=CheckpointRestore(data_iterator),
                    meta=ocp.args.JsonRestore(),
                ),
            )
        except (FileNotFoundError, ValueError, KeyError) as e:
            raise CheckpointError(f"cannot restore checkpoint step {step} from {self.directory}: {e}") from e
        return out["state"], out["meta"]

    def restore_meta(self, step: int) -> dict:
        """The run position saved with checkpoint `step`; a CheckpointError if its format is not this
        pcomp's (`CHECKPOINT_FORMAT`)."""
        meta = self._mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        found = meta.get("format", 1) if isinstance(meta, dict) else None
        if found != CHECKPOINT_FORMAT:
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} has format {found} "
                f"({_FORMATS.get(found, 'unknown')}); this pcomp reads format {CHECKPOINT_FORMAT} "
                f"({_FORMATS[CHECKPOINT_FORMAT]}): train again, or export the run with the pcomp that wrote it "
                f"(pcomp export-hf) and import it here (pcomp import-hf)")
        return meta

    def restore_params(self, step: int, abstract_state):
        """Only the train state (for eval / generate, where no data iterator exists)."""
        self.restore_meta(step)
        return self._mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))[
            "state"
        ]

    def wait(self) -> None:
        try:
            self._mngr.wait_until_finished()
        except (OSError, ValueError, RuntimeError) as e:
            raise self._write_error(self._mngr.latest_step() or -1, e) from None

    def close(self) -> None:
        try:
            self._mngr.close()
        except (OSError, ValueError, RuntimeError) as e:
            raise self._write_error(-1, e) from None


def abstract_with_shardings(shape_tree, sharding_tree):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shape_tree, sharding_tree)
