"""orbax checkpoints of the whole run: train state, grain iterator state and run position.

A checkpoint holds three items: `state` (params, optimizer, step, rng as sharded arrays), `data`
(the grain iterator, one JSON per process) and `meta` (stage, steps and tokens so far). The last
`keep` are kept; `latest()` finds where to resume.
"""

from __future__ import annotations

from pathlib import Path

import jax
import orbax.checkpoint as ocp
from grain.checkpoint import CheckpointRestore, CheckpointSave

from pcomp.errors import CheckpointError


class Checkpointer:
    def __init__(self, directory: str | Path, keep: int):
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
        self._mngr.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=CheckpointSave(data_iterator),
                meta=ocp.args.JsonSave(meta),
            ),
            force=True,
        )

    def restore(self, step: int, abstract_state, data_iterator):
        """Returns (state, meta); `data_iterator` is advanced in place to the saved position."""
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
        return self._mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore_params(self, step: int, abstract_state):
        """Only the train state (for eval / generate, where no data iterator exists)."""
        return self._mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))[
            "state"
        ]

    def wait(self) -> None:
        self._mngr.wait_until_finished()

    def close(self) -> None:
        self._mngr.close()


def abstract_with_shardings(shape_tree, sharding_tree):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shape_tree, sharding_tree)
