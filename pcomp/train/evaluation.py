"""The one held-out evaluation loop: token-level loss, perplexity and bits per byte.

Bits per byte = total cross-entropy bits of the held-out token stream / its UTF-8 bytes (every
token but the first scored exactly once; see `pcomp.data.pipeline.eval_windows`). The trainer calls
it with its sharded eval step; `pcomp.train.load.evaluate` with a loaded run on one device.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import Mesh

from pcomp.data.pipeline import EvalSet
from pcomp.models.sharding import batch_sharding


def nats_to_bits_per_byte(nll_nats: float, n_bytes: int) -> float:
    return nll_nats / math.log(2) / max(n_bytes, 1)


def global_batch(local: np.ndarray, mesh: Mesh) -> jax.Array:
    """This process's rows of a batch as one global array sharded over the mesh's batch axes."""
    return jax.make_array_from_process_local_data(batch_sharding(mesh), np.asarray(local, np.int32))


def evaluate(eval_fn, params, eval_data: EvalSet, batch_size: int, mesh: Mesh) -> dict:
    """`eval_fn(params, batch) -> (summed nll, target count)` over every batch of `eval_data`.

    Each process feeds its share of the rows when the mesh spans several processes."""
    processes = sorted({d.process_index for d in mesh.devices.flat})
    pidx = processes.index(jax.process_index())
    nll = count = 0.0
    for batch in eval_data.batches(batch_size):
        local = {k: np.split(v, len(processes))[pidx] for k, v in batch.items()}
        n, c = eval_fn(params, {k: global_batch(v, mesh) for k, v in local.items()})
        nll, count = nll + float(n), count + float(c)
    loss = nll / max(count, 1.0)
    return {
        "eval/loss": loss,
        "eval/perplexity": math.exp(min(loss, 80.0)),
        "eval/bits_per_byte": nats_to_bits_per_byte(nll, eval_data.n_bytes),
        "eval/tokens": count,
        "eval/bytes": eval_data.n_bytes,
    }
