"""Sampling with a KV cache: one jitted decode step, prompt fed through the same step."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


@functools.partial(jax.jit, static_argnums=(0, 7))
def _step(graphdef, params, cache, token_b, pos_b, key, temperature, top_k):
    model = nnx.merge(graphdef, params)
    logits_bv, cache = model.decode_step(token_b, pos_b, cache)
    logits_bv = logits_bv / jnp.maximum(temperature, 1e-6)
    kth = jnp.sort(logits_bv, axis=-1)[:, -top_k][:, None]
    logits_bv = jnp.where(logits_bv < kth, -jnp.inf, logits_bv)
    sampled = jax.random.categorical(key, logits_bv, axis=-1)
    greedy = jnp.argmax(logits_bv, axis=-1)
    return jnp.where(temperature > 0, sampled, greedy).astype(jnp.int32), cache


def generate(graphdef, params, prompt_ids: np.ndarray, *, max_new_tokens: int, max_len: int,
             temperature: float = 0.8, top_k: int = 40, seed: int = 0, stop_id: int | None = None) -> np.ndarray:
    """Continue `prompt_ids` (1-D, non-empty) by up to `max_new_tokens`; temperature 0 is greedy."""
    prompt_ids = np.asarray(prompt_ids, np.int32)
    if prompt_ids.ndim != 1 or len(prompt_ids) == 0:
        raise ValueError("prompt_ids must be a non-empty 1-D array")
    total = min(len(prompt_ids) + max_new_tokens, max_len)
    model = nnx.merge(graphdef, params)
    cache = model.init_cache(1, max_len)
    top_k = int(min(max(top_k, 1), model.cfg.vocab_size))
    key = jax.random.key(seed)
    out = list(prompt_ids)
    for pos in range(total - 1):
        key, sub = jax.random.split(key)
        nxt, cache = _step(graphdef, params, cache, jnp.asarray([out[pos]]), jnp.asarray([pos]), sub,
                           jnp.float32(temperature), top_k)
        if pos + 1 >= len(out):
            token = int(nxt[0])
            if token == stop_id:
                break
            out.append(token)
    return np.asarray(out[len(prompt_ids):], np.int32)
