"""M1: the small byte-level LM that drives the arithmetic coder, run as a batched JAX stepper.

Equal-Info Windows need M1's distribution for every byte given only the bytes of its window, and
the encoder and the decoder must see bitwise-identical distributions, or decoding fails. Batch
size, KV cache versus full sequence, padding and device all change float results, so every M1
evaluation goes through ONE jitted function with ONE fixed batch shape (`batch` rows, padded):

    step(cache, tokens_b, positions_b) -> (cum_bn, cache)

feeds one byte per row at that row's position against its KV cache and returns the quantized
cumulative frequency table (int32 [batch, n + 1], total 2**precision) of the next symbol. On a
fixed shape a row's result does not depend on the other rows (checked in the tests), so a window
decoded alone matches the same window coded inside a full batch. Position 0 of every row's cache
holds BOS, written once; a window starts at position 1. The distribution after BOS alone is the
same for every window, so it is computed once (`first_cum`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pcomp.compress.quantize import quantize_probs_jax
from pcomp.data.tokenizers import ByteTokenizer
from pcomp.errors import CheckpointError
from pcomp.train.load import TrainedModel, load_trained

# Bump when M1's step computes differently (layout, quantization, ...): it is part of the fingerprint,
# so files made by older code fail with a clear "other M1" error instead of decoding differently.
NUMERICS_VERSION = 3  # 3: projections as 2-D matmuls (pcomp.models.transformer.dense)
BYTES = "bytes"  # 256 symbols: the byte values
BYTES_EOS = "bytes+eos"  # 257 symbols: bytes, then end-of-document (M1's EOS token)


@functools.partial(jax.jit, static_argnums=(0, 5), donate_argnums=(2,))
def _step(graphdef, params, cache, tokens_b, positions_b, precision, symbol_ids):
    model = nnx.merge(graphdef, params)
    logits_bv, cache = model.decode_step(tokens_b, positions_b, cache)
    probs_bn = jax.nn.softmax(logits_bv[:, symbol_ids], axis=-1)
    freqs_bn = quantize_probs_jax(probs_bn, precision)
    cum_bn = jnp.concatenate([jnp.zeros_like(freqs_bn[:, :1]), jnp.cumsum(freqs_bn, axis=-1)], axis=-1)
    return cum_bn.astype(jnp.int32), cache


@dataclasses.dataclass
class M1:
    """A trained byte-level model as a coder's probability model (see module docstring)."""

    trained: TrainedModel
    precision: int = 14
    batch: int = 256
    symbols: str = BYTES
    context: int = 0  # KV-cache positions (BOS + window bytes); 0 = the model's max_seq_len

    def __post_init__(self):
        tok = self.trained.tokenizer
        if not isinstance(tok, ByteTokenizer) or tok.bos_id is None:
            raise CheckpointError(
                f"M1 at {self.trained.workdir} uses tokenizer {tok!r}; expected a byte-level model with "
                f"BOS/EOS (train one with: pcomp train --config m1-3m)"
            )
        max_len = self.trained.cfg.model.max_seq_len
        self.context = self.context or max_len
        if not 2 <= self.context <= max_len:
            raise CheckpointError(f"M1 context {self.context} must be in [2, {max_len}] (the model's max_seq_len)")
        if self.batch < 1:
            raise CheckpointError(f"M1 batch {self.batch} must be >= 1")
        ids = list(range(256)) + ([tok.eos_id] if self.symbols == BYTES_EOS else [])
        self._symbol_ids = jnp.asarray(ids, jnp.int32)
        self.n_symbols = len(ids)
        self.bos_id = tok.bos_id
        self.device = jax.local_devices()[0]
        self._params = jax.device_put(self.trained.params, self.device)
        self._bos_cache = None
        self.first_cum = None

    @classmethod
    def load(cls, path, **kw) -> M1:
        return cls(load_trained(path), **kw)

    @property
    def max_window_bytes(self) -> int:
        """Longest window: the KV cache's positions minus the BOS position. Attention reads the whole
        cache every step, so a cache no longer than the windows need keeps the step fast."""
        return self.context - 1

    @functools.cached_property
    def fingerprint(self) -> str:
        """sha256 over M1's config, parameters, precision, symbol set and numerics version: which M1
        (computing how) made a file. The KV-cache length and batch are recorded beside it."""
        h = hashlib.sha256()
        h.update(json.dumps(dataclasses.asdict(self.trained.cfg.model), sort_keys=True).encode())
        h.update(f"precision={self.precision};symbols={self.symbols};numerics={NUMERICS_VERSION}".encode())
        for path, leaf in sorted(jax.tree_util.tree_leaves_with_path(self.trained.params), key=lambda x: str(x[0])):
            arr = np.asarray(leaf)
            h.update(f"{jax.tree_util.keystr(path)}:{arr.dtype}:{arr.shape}".encode())
            h.update(arr.tobytes())
        return h.hexdigest()

    def start(self):
        """A KV cache whose position 0 holds BOS in every row (and `first_cum`, computed once)."""
        if self._bos_cache is None:
            model = nnx.merge(self.trained.graphdef, self._params)
            cache = jax.device_put(model.init_cache(self.batch, self.context), self.device)
            bos = jnp.full((self.batch,), self.bos_id, jnp.int32)
            cum, cache = _step(self.trained.graphdef, self._params, cache, bos, jnp.zeros((self.batch,), jnp.int32),
                               self.precision, self._symbol_ids)
            self.first_cum = np.asarray(cum)[0].astype(np.int64)
            self._bos_cache = cache
        return jax.tree.map(jnp.copy, self._bos_cache)

    def step(self, cache, tokens_b: np.ndarray, positions_b: np.ndarray):
        """Feed tokens_b [batch] at positions_b [batch] (>= 1); returns (cum_bn int64 [batch, n+1], cache)."""
        cum, cache = _step(self.trained.graphdef, self._params, cache, jnp.asarray(tokens_b, jnp.int32),
                           jnp.asarray(positions_b, jnp.int32), self.precision, self._symbol_ids)
        return np.asarray(cum).astype(np.int64), cache

    def flops_per_step(self) -> float:
        """Forward model FLOPs of one step (all rows), attention over the full cache counted."""
        from pcomp.train.metrics import flops_per_position

        return self.batch * flops_per_position(self.trained.cfg.model, self.context,
                                               training=False)
