"""Load a trained run (config, tokenizer, latest parameters) from its work directory."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
from flax import nnx

from pcomp.config import Config, from_dict
from pcomp.data.tokenizers import Tokenizer, load_tokenizer
from pcomp.errors import CheckpointError
from pcomp.models.sharding import make_mesh
from pcomp.train import step as steplib
from pcomp.train.checkpoint import Checkpointer, abstract_with_shardings


@dataclasses.dataclass
class TrainedModel:
    cfg: Config
    tokenizer: Tokenizer
    graphdef: nnx.GraphDef
    params: nnx.State
    step: int
    workdir: Path

    def model(self) -> nnx.Module:
        return nnx.merge(self.graphdef, self.params)


def load_trained(workdir: str | Path, *, step: int | None = None, single_device: bool = True) -> TrainedModel:
    """The parameters of the latest (or given) checkpoint of the run in `workdir`.

    With `single_device` the parameters land on the first local device (eval, generation, M1);
    otherwise they are sharded over the run's mesh.
    """
    workdir = Path(workdir)
    cfg_path, tok_dir = workdir / "config.json", workdir / "tokenizer"
    if not cfg_path.is_file() or not (tok_dir / "tokenizer.json").is_file():
        raise CheckpointError(f"{workdir} is not a pcomp run directory (no config.json / tokenizer/)")
    cfg = from_dict(json.loads(cfg_path.read_text()))
    tokenizer = load_tokenizer(tok_dir)
    ckpt = Checkpointer(cfg.training.checkpoint_dir or workdir / "checkpoints", keep=cfg.training.keep_checkpoints)
    step = ckpt.latest() if step is None else step
    if step is None:
        raise CheckpointError(f"{workdir / 'checkpoints'} holds no checkpoint")
    tx, _ = steplib.make_optimizer(cfg.training, 1)
    shapes = jax.eval_shape(lambda: steplib.init_state(cfg.model, tx, 0))
    if single_device:
        dev = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        shardings = jax.tree.map(lambda _: dev, shapes)
    else:
        shardings = steplib.state_shardings(shapes, make_mesh(cfg.mesh))
    state = ckpt.restore_params(step, abstract_with_shardings(shapes, shardings))
    ckpt.close()
    graphdef, _ = steplib.abstract_model(cfg.model)
    return TrainedModel(cfg, tokenizer, graphdef, state["params"], step, workdir)


def evaluate(run: TrainedModel, docs, max_bytes: int = 0, batch_size: int = 16) -> dict:
    """Held-out bits/byte of `run` on `docs`, windowed as the run was trained (see `eval_set`)."""
    from pcomp.data import pipeline

    data = pipeline.eval_set(docs, run.tokenizer, run.cfg.data.seq_len, max_bytes, bos_first=run.cfg.data.bos_first)
    fn = jax.jit(lambda p, b: steplib.eval_step(run.graphdef, p, b))
    nll = count = 0.0
    for batch in data.batches(batch_size):
        n, c = fn(run.params, batch)
        nll, count = nll + float(n), count + float(c)
    return {"bits_per_byte": steplib.nats_to_bits_per_byte(nll, data.n_bytes), "loss": nll / count,
            "bytes": data.n_bytes, "tokens": int(count)}
