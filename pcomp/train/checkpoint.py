"""orbax checkpoints of the whole run: train state, grain iterator state and run position.

A checkpoint holds three items: `state` (params, optimizer state and step as sharded arrays), `data`
(the grain iterator, one JSON per process) and `meta` (stage, steps and tokens so far). The last
`keep` are kept; `latest()` finds where to resume. `meta` also records the checkpoint's format
(`CHECKPOINT_FORMAT`); format 2 still restores (its unused rng key is read and dropped), any other
format is a one-line CheckpointError.
"""

from __future__ import annotations

import errno
import logging
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from grain.checkpoint import CheckpointRestore, CheckpointSave

from pcomp.errors import CheckpointError

# Bump when the train state's layout changes; `_READS` lists the formats this pcomp restores.
# 1 (unrecorded): one parameter per block and layer; 2: the blocks stacked along a leading layers axis,
# and an rng key nothing read; 3: format 2 without the rng key.
CHECKPOINT_FORMAT = 3
_FORMATS = {1: "one set of parameters per layer", 2: "the layers' parameters stacked, under nnx.scan, and an rng key",
            3: "the layers' parameters stacked, under nnx.scan"}
_READS = (2, 3)


class _OrbaxFailureFilter(logging.Filter):
    """Drops orbax's background-thread error logs (each with a full traceback, hundreds of lines on
    a full disk); the failure reaches the user once, as the `CheckpointError` raised by
    `Checkpointer.save` / `wait`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        return "orbax" not in record.pathname and "orbax" not in record.getMessage()


def _is_closed_loop_echo(kind, value) -> bool:
    return kind is RuntimeError and str(value) == "Event loop is closed"


def _drop_closed_loop_echoes(previous):
    """A failed restore or write leaves tensorstore callbacks that reach orbax's event loop after it
    closed; each prints `RuntimeError: Event loop is closed` with a traceback (dozens of them), through
    `sys.excepthook` (tensorstore's PyErr_Print) or `sys.unraisablehook` (its PyErr_WriteUnraisable).
    The failure itself reaches the user once, as a CheckpointError: this hook drops exactly those
    echoes and passes everything else to the previous hook."""

    def hook(kind, value, tb):
        if not _is_closed_loop_echo(kind, value):
            previous(kind, value, tb)

    hook.pcomp_drops_closed_loop_echoes = True
    return hook


def _drop_closed_loop_unraisable(previous):
    """`_drop_closed_loop_echoes` for `sys.unraisablehook` (one argument: the UnraisableHookArgs)."""

    def hook(unraisable):
        if not _is_closed_loop_echo(unraisable.exc_type, unraisable.exc_value):
            previous(unraisable)

    hook.pcomp_drops_closed_loop_echoes = True
    return hook


def _install_filter() -> None:
    if not getattr(sys.excepthook, "pcomp_drops_closed_loop_echoes", False):
        sys.excepthook = _drop_closed_loop_echoes(sys.excepthook)
    if not getattr(sys.unraisablehook, "pcomp_drops_closed_loop_echoes", False):
        sys.unraisablehook = _drop_closed_loop_unraisable(sys.unraisablehook)
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
        self._pending: int | None = None  # the step being written asynchronously

    def latest(self) -> int | None:
        return self._mngr.latest_step()

    def last_complete(self, but: int | None = None) -> int | None:
        """The latest checkpoint complete on disk now (re-read: after a failed write), other than `but`."""
        try:
            self._mngr.reload()
        except Exception:  # reading the directory failed too: what was known before
            pass
        return max((s for s in self.all_steps() if s != but), default=None)

    def all_steps(self) -> list[int]:
        return list(self._mngr.all_steps())

    def save(self, step: int, state, data_iterator, meta: dict) -> None:
        """Start writing checkpoint `step` (asynchronously). The previous write is finished first, so its
        failure surfaces here under its own step, not this one's."""
        self._finish_pending()
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
        self._pending = step

    def _finish_pending(self) -> None:
        """Wait for the write in flight (if any); its failure is a CheckpointError naming its step."""
        step, self._pending = self._pending, None
        try:
            self._mngr.wait_until_finished()
        except (OSError, ValueError, RuntimeError) as e:
            raise self._write_error(step, e) from None

    def _write_error(self, step: int | None, e: Exception) -> CheckpointError:
        text = str(e)
        if getattr(e, "errno", None) == errno.ENOSPC or "RESOURCE_EXHAUSTED" in text or "No space left" in text:
            reason = "no space left on device"
        else:
            reason = (text.splitlines() or [type(e).__name__])[0][:300]
        last = self.last_complete(but=step)
        which = f"checkpoint step {step}" if step is not None else "a checkpoint"
        return CheckpointError(
            f"cannot write {which} to {self.directory}: {reason}"
            + (f"; the last complete checkpoint is step {last}" if last is not None else "; no checkpoint is complete")
        )

    def restore(self, step: int, abstract_state, data_iterator):
        """Returns (state, meta); `data_iterator` is advanced in place to the saved position."""
        meta = self.restore_meta(step)  # the format first: another layout fails clearly, not inside orbax
        out = self._restore(step, state=ocp.args.StandardRestore(_stored(abstract_state, meta)),
                            data=CheckpointRestore(data_iterator), meta=ocp.args.JsonRestore())
        return _current(out["state"]), out["meta"]

    def restore_meta(self, step: int) -> dict:
        """The run position saved with checkpoint `step`; a CheckpointError if its format is not one this
        pcomp restores (`_READS`)."""
        meta = self._restore(step, meta=ocp.args.JsonRestore())["meta"]
        found = meta.get("format", 1) if isinstance(meta, dict) else None
        if found not in _READS:
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} has format {found} "
                f"({_FORMATS.get(found, 'unknown')}); this pcomp reads format {CHECKPOINT_FORMAT} "
                f"({_FORMATS[CHECKPOINT_FORMAT]}): train again, or export the run with the pcomp that wrote it "
                f"(pcomp export-hf) and import it here (pcomp import-hf)")
        return meta

    def restore_params(self, step: int, abstract_state):
        """Only the train state (for eval / generate, where no data iterator exists)."""
        meta = self.restore_meta(step)
        return _current(self._restore(step, state=ocp.args.StandardRestore(_stored(abstract_state, meta)))["state"])

    def _restore(self, step: int, **items):
        """The one restore path: orbax's restore of `items`, any failure of which (missing or damaged
        files, arrays that do not fit the model) is one CheckpointError naming the step and the cause."""
        try:
            return self._mngr.restore(step, args=ocp.args.Composite(**items))
        except CheckpointError:
            raise
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
            error = self._read_error(step, e)
            try:  # join orbax's threads now, so their echoes of the failure meet the hook (not exit)
                self._mngr.close()
            except Exception:
                pass
            raise error from None

    def _read_error(self, step: int, e: Exception) -> CheckpointError:
        text = " ".join(str(e).split()) or type(e).__name__
        text = text.split(" [tensorstore_spec")[0]
        for noise in ('Error opening "cast" driver: ', 'Error opening "zarr" driver: '):
            text = text.replace(noise, "")
        where = f"cannot restore checkpoint step {step} from {self.directory}"
        if "not compatible with the stored shape" in text or "shape" in text.lower() and "mismatch" in text.lower():
            return CheckpointError(f"{where}: its arrays do not fit the model the run's config.json describes "
                                   f"({text[:240]}); was config.json edited after training?")
        older = sorted((s for s in self.all_steps() if s < step), reverse=True)
        advice = (f"; the older checkpoint step {older[0]} is on disk: to use it, move {self._step_dir(step)} out of "
                  f"{self.directory}" if older else "; no older checkpoint is on disk")
        return CheckpointError(f"{where}: it is damaged or incomplete ({text[:300]}){advice}")

    def _step_dir(self, step: int):
        return f"{self.directory}/{step}"

    def wait(self) -> None:
        self._finish_pending()

    def close(self) -> None:
        self._finish_pending()
        try:
            self._mngr.close()
        except (OSError, ValueError, RuntimeError) as e:
            raise self._write_error(None, e) from None


def _stored(abstract_state, meta: dict):
    """The state as checkpoint `meta`'s format stored it: format 2 also held a threefry key's data
    (uint32[2], replicated like the step), which orbax must be asked for to restore the rest."""
    if meta.get("format") != 2 or not isinstance(abstract_state, dict):
        return abstract_state
    step = abstract_state["step"]
    return {**abstract_state, "rng": jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=getattr(step, "sharding", None))}


def _current(state):
    """A restored state in this format's layout (a format-2 checkpoint's rng key dropped)."""
    return {k: v for k, v in state.items() if k != "rng"} if isinstance(state, dict) else state


def abstract_with_shardings(shape_tree, sharding_tree):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shape_tree, sharding_tree)
