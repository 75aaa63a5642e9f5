"""Probabilities -> integer frequency tables for the arithmetic coder (`pcomp.compress.arith`).

Rule (shared by encoder and decoder, so it must be reproducible bit for bit):
  M = 2**precision - n;  f_i = 1 + floor(p_i * M)  with p normalized by its sum;
  the remainder r = 2**precision - sum(f) (tiny, may be negative) goes to f[argmax(p)].
Every f_i >= 1 (any symbol stays codable) and sum(f) == 2**precision exactly.

`quantize_probs` (numpy, float64) and `quantize_probs_jax` (jax, float32) follow the same rule but
may differ by rounding; each is deterministic on its own, so encoder and decoder must use the same one.
"""

import numpy as np

from pcomp.config import MAX_PRECISION, MIN_PRECISION, CompressConfig

DEFAULT_PRECISION = CompressConfig.precision


def check_precision(precision):
    """Validate `precision` (bits of the frequency total) and return it as an int."""
    if isinstance(precision, bool) or not isinstance(precision, (int, np.integer)):
        raise ValueError(f"precision={precision!r}: expected an int in [{MIN_PRECISION}, {MAX_PRECISION}]")
    if not MIN_PRECISION <= precision <= MAX_PRECISION:
        raise ValueError(f"precision={precision}: expected an int in [{MIN_PRECISION}, {MAX_PRECISION}]")
    return int(precision)


def _check_alphabet(shape, precision):
    """Validate the alphabet size (last axis) against precision; return it."""
    if len(shape) == 0:
        raise ValueError("probs is a scalar: expected an array whose last axis is the alphabet")
    n = shape[-1]
    if not 1 <= n <= (1 << precision) // 2:
        raise ValueError(
            f"alphabet size n={n}: expected 1 <= n <= 2**precision // 2 = {(1 << precision) // 2} "
            f"(precision={precision})")
    return n


def _check_values(p):
    """Validate float64 probs [..., n]; return their row sums [..., 1] (NaN/inf anywhere shows in the sums)."""
    with np.errstate(over="ignore"):
        total = p.sum(axis=-1, keepdims=True)
    if not np.all(np.isfinite(total)):
        raise ValueError("probs contain NaN or inf, or a row sum overflows: expected finite values >= 0")
    if p.size and p.min() < 0:
        raise ValueError(f"probs contain a negative value ({p.min()}): expected values >= 0")
    if np.any(total <= 0):
        raise ValueError("probs have a row summing to 0: expected a positive sum")
    return total


def quantize_probs(probs, precision=DEFAULT_PRECISION):
    """Quantize probs [..., n] (>= 0, finite, positive sum) to int32 frequencies [..., n] summing to 2**precision."""
    precision = check_precision(precision)
    p = np.asarray(probs, dtype=np.float64)
    n = _check_alphabet(p.shape, precision)
    total = _check_values(p)  # [..., 1]
    q = p / total
    q *= (1 << precision) - n
    np.floor(q, out=q)
    f = q.astype(np.int32)  # [..., n], each <= 2**24
    f += 1
    r = (1 << precision) - f.sum(axis=-1, dtype=np.int64)  # [...]
    top = np.argmax(p, axis=-1)[..., None]  # first index of the max
    np.put_along_axis(f, top, np.take_along_axis(f, top, axis=-1) + r[..., None].astype(np.int32), axis=-1)
    return f


def quantize_probs_jax(probs, precision=DEFAULT_PRECISION):
    """jax.numpy version of `quantize_probs` in float32 (jit-able; may differ from numpy by rounding).

    Values (as float32) are checked only when called eagerly; under jit only shapes and precision are.
    Rows are scaled by their max first so that float32 sums cannot overflow.
    """
    import jax
    import jax.numpy as jnp

    precision = check_precision(precision)
    n = _check_alphabet(jnp.shape(probs), precision)
    if not isinstance(probs, jax.core.Tracer):
        with np.errstate(over="ignore"):  # float32 overflow shows up as inf, rejected below
            _check_values(np.asarray(probs, dtype=np.float32).astype(np.float64))
    p = jnp.asarray(probs, jnp.float32)
    top = jax.nn.one_hot(jnp.argmax(p, axis=-1), n, dtype=jnp.int32)  # [..., n], first index of the max
    p = p / p.max(axis=-1, keepdims=True)
    p = p / p.sum(axis=-1, keepdims=True)
    f = 1 + jnp.floor(p * jnp.float32((1 << precision) - n)).astype(jnp.int32)  # [..., n]
    r = (1 << precision) - f.sum(axis=-1)  # [...]
    return f + r[..., None] * top


def cumulative(freqs):
    """Cumulative table [..., n + 1] (int64) with a leading 0: cum[s] = sum(f[:s]), cum[n] = total."""
    f = np.asarray(freqs)
    if f.ndim == 0 or not np.issubdtype(f.dtype, np.integer):
        raise ValueError(f"freqs of dtype {f.dtype} and shape {f.shape}: expected an integer array [..., n]")
    cum = np.zeros(f.shape[:-1] + (f.shape[-1] + 1,), dtype=np.int64)
    np.cumsum(f, axis=-1, dtype=np.int64, out=cum[..., 1:])
    return cum
