"""Patch-level training (Shao, Meng, Zhou 2024): patch embeddings and the next-patch loss.

A patch-level sequence holds n*K tokens. Patch i's input embedding is the mean of the model's own
token embeddings iK .. iK+K-1 (no new parameters); the n patches run through the unchanged
transformer at positions 0 .. n-1, and the single LM-head softmax at patch i is scored against
all K tokens of patch i+1. With K = 1 both functions reduce exactly to token-level training.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pcomp.errors import ConfigError


def check_patch_size(seq_len: int, patch_size: int) -> int:
    """Number of patches n = seq_len / K; a clear error when K does not divide seq_len."""
    if patch_size < 1:
        raise ConfigError(f"patch_size={patch_size} must be >= 1")
    if seq_len % patch_size:
        raise ConfigError(f"sequence length {seq_len} is not divisible by patch_size={patch_size}")
    return seq_len // patch_size


def patchify(embeddings_btd: jax.Array, patch_size: int) -> jax.Array:
    """[b, n*K, d] token embeddings -> [b, n, d] patch embeddings (mean over each K tokens)."""
    b, t, d = embeddings_btd.shape
    n = check_patch_size(t, patch_size)
    if patch_size == 1:
        return embeddings_btd
    return embeddings_btd.reshape(b, n, patch_size, d).mean(axis=2)


def next_patch_nll(logits_bnv, tokens_bt, patch_size: int, mask_bt=None):
    """Summed next-patch NLL, target count, and summed squared log-partition (for z-loss).

    Target (b, i, k) for i < n-1 is tokens[b, (i+1)K + k], scored by logits[b, i]; a 0 in
    `mask_bt` (padding) removes that target. Returns (nll_sum, count, lse_sq_sum) as float32.
    """
    b, n, _ = logits_bnv.shape
    if tokens_bt.shape != (b, n * patch_size):
        raise ConfigError(
            f"tokens shape {tuple(tokens_bt.shape)} does not match logits {tuple(logits_bnv.shape)} "
            f"with patch_size={patch_size}: expected ({b}, {n * patch_size})"
        )
    logits = logits_bnv[:, :-1].astype(jnp.float32)  # the last patch has no next patch
    lse_bn = jax.nn.logsumexp(logits, axis=-1)  # one softmax per patch
    targets_bnk = tokens_bt[:, patch_size:].reshape(b, n - 1, patch_size)
    target_logit_bnk = jnp.take_along_axis(logits, targets_bnk, axis=-1)
    nll_bnk = lse_bn[..., None] - target_logit_bnk
    if mask_bt is None:
        w_bnk = jnp.ones_like(nll_bnk)
    else:
        w_bnk = mask_bt[:, patch_size:].reshape(b, n - 1, patch_size).astype(jnp.float32)
    w_bn = w_bnk.max(axis=-1)  # a patch position counts for z-loss if any of its targets is real
    return (nll_bnk * w_bnk).sum(), w_bnk.sum(), (lse_bn * lse_bn * w_bn).sum()


def next_patch_loss(logits_bnv, tokens_bt, patch_size: int, mask_bt=None) -> jax.Array:
    """Mean over b, i < n-1, k < K of -log softmax(logits[b, i])[tokens[b, (i+1)K + k]]."""
    nll, count, _ = next_patch_nll(logits_bnv, tokens_bt, patch_size, mask_bt)
    return nll / jnp.maximum(count, 1.0)


def relative_cost(patch_size: int, patch_fraction: float) -> float:
    """Training compute relative to token-level training on the same tokens: lambda/K + 1 - lambda."""
    if patch_size == 1:
        return 1.0
    return (patch_fraction + patch_size * (1.0 - patch_fraction)) / patch_size  # exact 0.5 for K=4, 2/3
