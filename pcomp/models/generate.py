"""Sampling with a KV cache: one jitted decode step, prompt fed through the same step.

Generation is not limited by the model's context: when the sequence reaches `max_len` positions the
cache is rebuilt from the most recent `max_len // 2` tokens (after the BOS, which stays at position 0
for models that always saw it there) and sampling continues, a sliding window that advances by half
a context at a time.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pcomp.errors import ConfigError


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


def check_sampling(*, max_new_tokens: int, temperature: float, top_k: int, seed: int) -> None:
    """ConfigError unless max_new_tokens >= 1, temperature is finite and >= 0 (0 = greedy),
    top_k >= 0 (0 = the whole vocabulary) and 0 <= seed < 2**32."""
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens={max_new_tokens} must be >= 1")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ConfigError(f"temperature={temperature} must be a finite number >= 0 (0 = greedy)")
    if top_k < 0:
        raise ConfigError(f"top_k={top_k} must be >= 0 (0 = the whole vocabulary)")
    if not 0 <= seed < 2**32:
        raise ConfigError(f"seed={seed} must be in [0, 2**32)")


def generate(graphdef, params, prompt_ids: np.ndarray, *, max_new_tokens: int, max_len: int,
             temperature: float = 0.8, top_k: int = 40, seed: int = 0, stop_id: int | None = None,
             bos_id: int | None = None, on_token: Callable[[int], bool | None] | None = None) -> np.ndarray:
    """Continue `prompt_ids` (1-D, non-empty, at most `max_len` tokens) by up to `max_new_tokens`
    tokens (fewer only when `stop_id` is sampled); temperature 0 is greedy, top_k 0 keeps the whole
    vocabulary. Past `max_len` positions the context slides (see the module docstring); a prompt that
    starts with `bos_id` keeps that BOS at position 0 of every window. `on_token` is called with each
    new token as soon as it is sampled (streaming output); when it returns True, generation stops there."""
    check_sampling(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, seed=seed)
    prompt_ids = np.asarray(prompt_ids, np.int32)
    if prompt_ids.ndim != 1 or len(prompt_ids) == 0:
        raise ConfigError("the prompt is empty (no tokens); expected at least one token")
    if max_len < 1:
        raise ConfigError(f"max_len={max_len} must be >= 1")
    if len(prompt_ids) > max_len:
        raise ConfigError(
            f"the prompt is {len(prompt_ids)} tokens but the model's context is {max_len} tokens "
            f"(model.max_seq_len); shorten the prompt to at most {max_len} tokens"
        )
    model = nnx.merge(graphdef, params)
    vocab = model.cfg.vocab_size
    top_k = vocab if top_k == 0 else min(top_k, vocab)
    head = [int(prompt_ids[0])] if bos_id is not None and prompt_ids[0] == bos_id and max_len >= 2 else []
    keep = max(max_len // 2, len(head) + 1)  # tokens kept when the window slides, BOS included
    key = jax.random.key(seed)
    seq = [int(t) for t in prompt_ids]  # prompt + generated
    window = list(seq)  # the tokens at cache positions 0, 1, ... (fed up to `pos`)
    cache, pos = model.init_cache(1, max_len), 0
    while True:
        key, sub = jax.random.split(key)
        nxt, cache = _step(graphdef, params, cache, jnp.asarray([window[pos]]), jnp.asarray([pos]), sub,
                           jnp.float32(temperature), top_k)
        pos += 1
        if pos < len(window):  # still feeding the prompt (or a rebuilt window)
            continue
        token = int(nxt[0])
        if token == stop_id:
            break
        seq.append(token)
        window.append(token)
        if on_token is not None and on_token(token):
            break
        if len(seq) - len(prompt_ids) == max_new_tokens:
            break
        if len(window) > max_len:  # the next position is past the cache: slide
            window = head + seq[len(seq) - (keep - len(head)):]
            cache, pos = model.init_cache(1, max_len), 0
    return np.asarray(seq[len(prompt_ids):], np.int32)
