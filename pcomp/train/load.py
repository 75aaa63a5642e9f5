"""Load a trained run (config, tokenizer, latest parameters) from its work directory."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
from flax import nnx
from jax.sharding import Mesh

from pcomp.config import Config, MeshConfig
from pcomp.data.prepared import PreparedDataset
from pcomp.data.tokenizers import CONFIG_FILENAME, Tokenizer, load_tokenizer
from pcomp.errors import CheckpointError, DataError
from pcomp.models.sharding import make_mesh
from pcomp.train.checkpoint import Checkpointer
from pcomp.train.step import build_program


@dataclasses.dataclass
class TrainedModel:
    """A run's checkpoint loaded for use (evaluation, generation, an M1): config, tokenizer, model
    definition and parameters at `step`, from `workdir` (`load_trained`)."""

    cfg: Config
    tokenizer: Tokenizer
    graphdef: nnx.GraphDef
    params: nnx.State
    step: int
    workdir: Path

    def model(self) -> nnx.Module:
        return nnx.merge(self.graphdef, self.params)


def _mesh(cfg: Config, single_device: bool) -> Mesh:
    return make_mesh(MeshConfig(), jax.local_devices()[:1]) if single_device else make_mesh(cfg.mesh, model=cfg.model)


def load_trained(workdir: str | Path, *, step: int | None = None, single_device: bool = True) -> TrainedModel:
    """The parameters of the latest (or given) checkpoint of the run in `workdir`.

    With `single_device` the parameters land on the first local device (eval, generation, M1);
    otherwise they are sharded over the run's mesh.
    """
    workdir = Path(workdir)
    cfg_path, tok_dir = workdir / "config.json", workdir / "tokenizer"
    if not cfg_path.is_file() or not (tok_dir / "tokenizer.json").is_file():
        raise CheckpointError(f"{workdir} is not a pcomp run directory (no config.json / tokenizer/)")
    cfg = Config.load(str(cfg_path))
    tokenizer = load_tokenizer(tok_dir)
    ckpt = Checkpointer(cfg.training.checkpoint_dir or workdir / "checkpoints", keep=cfg.training.keep_checkpoints)
    step = ckpt.latest() if step is None else step
    if step is None:
        raise CheckpointError(f"{workdir / 'checkpoints'} holds no checkpoint")
    program = build_program(cfg.model, cfg.training, _mesh(cfg, single_device), steps=1)
    state = ckpt.restore_params(step, program.abstract_state())
    ckpt.close()
    return TrainedModel(cfg, tokenizer, program.graphdef, state["params"], step, workdir)


def check_prepared_tokenizer(run: TrainedModel, prepared: PreparedDataset) -> None:
    """DataError unless `prepared` was made with the run's own tokenizer (else its ids mean something
    else to the model)."""
    path = prepared.path
    ours = json.loads((run.workdir / "tokenizer" / CONFIG_FILENAME).read_text())
    theirs = json.loads((prepared.tokenizer_dir / CONFIG_FILENAME).read_text())
    strip = lambda c: {k: v for k, v in c.items() if k != "module"}  # noqa: E731
    if strip(ours) != strip(theirs):
        raise DataError(f"{path} was prepared with another tokenizer ({theirs.get('kind')}) than the run "
                        f"{run.workdir} was trained with ({ours.get('kind')}); evaluate on a dataset made with the "
                        f"run's tokenizer")
