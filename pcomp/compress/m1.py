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
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pcomp.compress.quantize import quantize_probs_jax
from pcomp.config import MAX_PRECISION, MIN_PRECISION, CompressConfig
from pcomp.data.tokenizers import ByteTokenizer
from pcomp.errors import CheckpointError, ConfigError
from pcomp.train.load import TrainedModel, load_trained

# Bump when M1's step computes differently (layout, quantization, ...): it is part of the fingerprint,
# so files made by older code fail with a clear "other M1" error instead of decoding differently.
# 3: projections as 2-D matmuls (pcomp.models.transformer.dense); 4: layers under nnx.scan, stacked KV
# cache. The per-layer step that replaced 4's scan computes the same bits (the committed files of
# tests/test_decode_fixtures.py decode), so it kept the number.
NUMERICS_VERSION = 4
BYTES = "bytes"  # 256 symbols: the byte values
BYTES_EOS = "bytes+eos"  # 257 symbols: bytes, then end-of-document (M1's EOS token)


class M1Warning(UserWarning):
    """An M1 that codes exactly but was not trained for the job (e.g. never predicted from BOS alone)."""


def window_context(window_bits: int, max_seq_len: int) -> int:
    """M1's KV-cache length for b-bit windows: BOS + at most 2b bytes (a byte coded in under half a
    bit is rare even for a strong M1), capped by the model's context. Attention reads the whole cache
    every step, so this is what makes the M1 step fast (~3x at b=16 against a 128 cache)."""
    return min(max_seq_len, 2 * window_bits + 1)


@dataclasses.dataclass
class StepTimer:
    """Wall-clock split of an M1-driven coder run, filled when set as `M1.timer` (benchmarks).

    Per M1 step: launch (incl. host->device of tokens/positions), compute (a block_until_ready is
    added, which the untimed step does not do), copy (device->host). Per numba row-kernel call
    (`pcomp.compress.windows`): its seconds and the rows it left needing the next M1 step.
    """

    launch: list = dataclasses.field(default_factory=list)
    compute: list = dataclasses.field(default_factory=list)
    copy: list = dataclasses.field(default_factory=list)
    kernel: list = dataclasses.field(default_factory=list)
    active: list = dataclasses.field(default_factory=list)

    def reset(self) -> None:
        for f in dataclasses.fields(self):
            getattr(self, f.name).clear()

    def record_kernel(self, seconds: float, active: int) -> None:
        self.kernel.append(seconds)
        self.active.append(int(active))

    @property
    def steps(self) -> int:
        return len(self.compute)

    def step_seconds(self) -> np.ndarray:
        """Seconds of each M1 step (launch + compute + copy), float64 [steps]."""
        return np.asarray(self.launch) + np.asarray(self.compute) + np.asarray(self.copy)


@functools.lru_cache(maxsize=32)
def _step_fn(graphdef, block_graphdef, treedef, precision: int):
    """M1's one jitted step for a model structure (made once per structure and precision, so a step
    call hashes no graph definitions and flattens no module state: ~1 ms of Python per step saved).

    step(leaves, cache, tokens_b, positions_b, symbol_ids) -> (cum_bn int32, cache); `leaves` are
    (params, block_params) flattened, block_params = each layer's parameters
    (`Transformer.unstacked_blocks`), split once by `M1`, so the step reads them in place (params'
    stacked copy goes unused)."""

    def step(leaves, cache, tokens_b, positions_b, symbol_ids):
        params, block_params = jax.tree.unflatten(treedef, leaves)
        model = nnx.merge(graphdef, params)
        blocks = [nnx.merge(block_graphdef, p) for p in block_params]
        logits_bv, cache = model.decode_step(tokens_b, positions_b, cache, blocks)
        probs_bn = jax.nn.softmax(logits_bv[:, symbol_ids], axis=-1)
        freqs_bn = quantize_probs_jax(probs_bn, precision)
        cum_bn = jnp.concatenate([jnp.zeros_like(freqs_bn[:, :1]), jnp.cumsum(freqs_bn, axis=-1)], axis=-1)
        return cum_bn.astype(jnp.int32), cache

    return jax.jit(step, donate_argnums=(1,))


@dataclasses.dataclass
class M1:
    """A trained byte-level model as a coder's probability model (see module docstring).

    Build it with `M1.for_windows`, which sizes the KV cache from the window bits.
    """

    trained: TrainedModel
    context: int  # KV-cache positions (BOS + window bytes); `for_windows` sizes it from the window bits
    precision: int = CompressConfig.precision
    batch: int = CompressConfig.m1_batch
    symbols: str = BYTES
    timer: StepTimer | None = None  # set to time every step (benchmarks); None = no added sync

    def __post_init__(self):
        tok = self.trained.tokenizer
        if not isinstance(tok, ByteTokenizer) or tok.bos_id is None:
            raise CheckpointError(
                f"M1 at {self.trained.workdir} uses tokenizer {tok!r}; expected a byte-level model with "
                f"BOS/EOS (train one with: pcomp train --config m1-3m)"
            )
        max_len = self.trained.cfg.model.max_seq_len
        if not 2 <= self.context <= max_len:
            raise CheckpointError(f"M1 context {self.context} must be in [2, {max_len}] (the model's max_seq_len)")
        if self.batch < 1:
            raise CheckpointError(f"M1 batch {self.batch} must be >= 1")
        if not MIN_PRECISION <= self.precision <= MAX_PRECISION:
            raise ConfigError(f"precision={self.precision}: expected an integer in [{MIN_PRECISION}, {MAX_PRECISION}]")
        _check_finite(self.trained)
        if not self.trained.cfg.data.bos_first:
            warnings.warn(f"M1 at {self.trained.workdir} was trained without data.bos_first, so never to predict a "
                          "window's first bytes from BOS alone: it codes exactly but compresses poorly "
                          "(train M1 with --config m1-3m)", M1Warning, stacklevel=3)
        ids = list(range(256)) + ([tok.eos_id] if self.symbols == BYTES_EOS else [])
        self._symbol_ids = jnp.asarray(ids, jnp.int32)
        self.n_symbols = len(ids)
        self.bos_id = tok.bos_id
        self.device = jax.local_devices()[0]
        self._params = jax.device_put(self.trained.params, self.device)
        blocks = nnx.merge(self.trained.graphdef, self._params).unstacked_blocks()
        self._leaves, treedef = jax.tree.flatten((self._params, [nnx.state(b) for b in blocks]))
        self._step_fn = _step_fn(self.trained.graphdef, nnx.graphdef(blocks[0]), treedef, self.precision)
        self._bos_cache = None
        self.first_cum = None
        self._with_batch = {self.batch: self}

    def with_batch(self, batch: int) -> M1:
        """This M1 set up for `batch` rows per step (memoized; same model, fingerprint and context).

        A row's tables depend on the batch shape, so a file records the batch it was coded with and
        is decoded with that batch (`pcomp.compress.codec` sizes it to the rows a file needs)."""
        if batch not in self._with_batch:
            with warnings.catch_warnings():  # the M1Warning, if any, was given when self was built
                warnings.simplefilter("ignore", M1Warning)
                other = dataclasses.replace(self, batch=batch)
            if "fingerprint" in self.__dict__:
                other.__dict__["fingerprint"] = self.fingerprint
            other._with_batch = self._with_batch
            self._with_batch[batch] = other
        return self._with_batch[batch]

    @classmethod
    def for_windows(cls, source: str | Path | TrainedModel, window_bits: int | None, *,
                    precision: int = CompressConfig.precision, batch: int = CompressConfig.m1_batch,
                    symbols: str = BYTES, context: int = 0) -> M1:
        """THE way to set up M1 from a run directory (or an already loaded `TrainedModel`).

        The KV cache holds `window_context(window_bits, max_seq_len)` positions: BOS + 2b bytes for
        b-bit windows, or the model's whole context when window_bits is None (plain arithmetic coding,
        no windows). `context` > 0 overrides it (a file's header records the length it was made with).
        """
        trained = source if isinstance(source, TrainedModel) else load_trained(source)
        if not context:
            max_len = trained.cfg.model.max_seq_len
            context = max_len if window_bits is None else window_context(window_bits, max_len)
        return cls(trained, context, precision=precision, batch=batch, symbols=symbols)

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
        model = dataclasses.asdict(self.trained.cfg.model)
        model.pop("scan_unroll")  # compiles the training forward only; M1 codes through decode_step
        h.update(json.dumps(model, sort_keys=True).encode())
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
            cum, cache = self._call(cache, bos, jnp.zeros((self.batch,), jnp.int32))
            self.first_cum = np.asarray(cum)[0].astype(np.int64)
            self._bos_cache = cache
        return jax.tree.map(jnp.copy, self._bos_cache)

    def _call(self, cache, tokens_b: jax.Array, positions_b: jax.Array):
        return self._step_fn(self._leaves, cache, tokens_b, positions_b, self._symbol_ids)

    def step(self, cache, tokens_b: np.ndarray, positions_b: np.ndarray):
        """Feed tokens_b [batch] at positions_b [batch] (>= 1); returns (cum_bn int64 [batch, n+1], cache)."""
        if self.timer is not None:
            return self._timed_step(cache, tokens_b, positions_b)
        cum, cache = self._call(cache, jnp.asarray(tokens_b, jnp.int32), jnp.asarray(positions_b, jnp.int32))
        return np.asarray(cum).astype(np.int64), cache

    def _timed_step(self, cache, tokens_b, positions_b):
        """`step` with a block_until_ready between launch and copy, recorded in `self.timer`."""
        t0 = time.perf_counter()
        cum, cache = self._call(cache, jnp.asarray(tokens_b, jnp.int32), jnp.asarray(positions_b, jnp.int32))
        t1 = time.perf_counter()
        jax.block_until_ready(cum)
        t2 = time.perf_counter()
        out = np.asarray(cum).astype(np.int64)
        t3 = time.perf_counter()
        self.timer.launch.append(t1 - t0)
        self.timer.compute.append(t2 - t1)
        self.timer.copy.append(t3 - t2)
        return out, cache

    def flops_per_step(self) -> float:
        """Forward model FLOPs of one step (all rows), attention over the full cache counted."""
        from pcomp.train.metrics import flops_per_position

        return self.batch * flops_per_position(self.trained.cfg.model, self.context,
                                               training=False)


def _check_finite(trained: TrainedModel) -> None:
    """A NaN or inf parameter makes every table degenerate (the coder would expand the text): refuse it."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(trained.params):
        if jnp.issubdtype(leaf.dtype, jnp.inexact) and not bool(jnp.isfinite(leaf).all()):
            bad = int((~jnp.isfinite(leaf)).sum())
            raise CheckpointError(f"M1 at {trained.workdir} has non-finite parameters ({jax.tree_util.keystr(path)}: "
                                  f"{bad} NaN/inf values); it cannot drive a coder")
