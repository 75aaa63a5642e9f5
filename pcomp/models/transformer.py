"""A decoder-only LLaMA-style transformer in Flax NNX: RMSNorm, RoPE, SwiGLU, no biases.

Shapes: b batch, t sequence, d model width, n query heads, k kv heads, h head dim, f MLP width,
v (padded) vocabulary, s KV-cache length, l layers.

The blocks are ONE stacked module: every block parameter has a leading `layers` axis (logical
axis "layers", replicated: `pcomp.models.sharding.RULES`), created with `nnx.vmap` and run with
`nnx.scan`, so the compiled program (and its compile time) does not grow with depth. `model.remat`
picks what the backward pass recomputes per block (`CHECKPOINT_POLICIES`); `model.scan_unroll` how
many blocks one loop iteration runs in the forward (the CPU-sized presets unroll fully:
`pcomp.config`). `decode_step` is the exception: a one-position step is small, and slicing a
layer's weights and cache out of the stacks inside it cost up to 40% of it on CPU, so it runs the
blocks one after another (`unstacked_blocks`, sliced once by a caller that decodes many steps)
against a per-layer KV cache: ((k [b, k, s, h], v [b, k, s, h]) for each layer).

The forward accepts either token ids or an input-embedding override (`embeddings_btd`), so
patch-level training (`pcomp.patching`) feeds averaged embeddings through the very same blocks.
`decode_step` runs one position per row against a KV cache (generation and the compressor M1).
Every parameter carries `logical_axes` metadata; `pcomp.models.sharding` maps them to the mesh.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from pcomp.config import ModelConfig
from pcomp.models.attention import attention
from pcomp.models.sharding import constrain

KVCache = tuple[tuple[jax.Array, jax.Array], ...]  # per layer (k_bksh, v_bksh): its keys and values

LAYERS = "layers"  # the logical axis of the stacked blocks (mapped to no mesh axis)
# nnx.vmap / nnx.scan add (and, inside the scan body, remove) the leading axis in `logical_axes` too
_STACKED = {nnx.PARTITION_NAME: LAYERS, "logical_axes": LAYERS}

# model.remat (other than "none") -> the jax.checkpoint policy of each block (None: save nothing)
CHECKPOINT_POLICIES = {
    "full": None,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,  # keep matmul outputs, recompute the rest
}


def _param(key: jax.Array, shape, axes, std: float, dtype) -> nnx.Param:
    value = std * jax.random.normal(key, shape, dtype)
    return nnx.Param(value, logical_axes=axes)


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float, param_dtype):
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype), logical_axes=("norm",))
        self.eps = eps

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (y * self.scale[...].astype(jnp.float32)).astype(x.dtype)


def dense(x, w, n_in: int = 1, preferred_element_type=None):
    """Contract the last `n_in` axes of x with the first `n_in` of w, as one 2-D matmul.

    Same math as the einsum; flattening batch and length first matters on CPU, where XLA
    transposes 3-D activations to form the weight gradient (the MLP backward runs 1.7x slower).
    On TPU/GPU the reshapes are free. Sharding is unaffected: only the (unsharded) length axis
    is merged into the batch axis.
    """
    lead, out = x.shape[: x.ndim - n_in], w.shape[n_in:]
    k = math.prod(w.shape[:n_in])
    y = jnp.matmul(x.reshape(-1, k), w.reshape(k, -1), preferred_element_type=preferred_element_type)
    return y.reshape(*lead, *out)


Rotary = tuple[jax.Array, jax.Array]  # (cos, sin) of every rotary angle, float32 [b or 1, t, 1, h/2]


def rope_frequencies(head_dim: int, theta: float) -> jax.Array:
    """The rotary inverse frequencies [h/2], float32."""
    return theta ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)


def rotary(positions_bt: jax.Array, head_dim: int, theta: float) -> Rotary:
    """cos and sin of the rotary angles of each position [b, t] -> two float32 [b, t, 1, h/2]."""
    angles = positions_bt[..., None].astype(jnp.float32) * rope_frequencies(head_dim, theta)  # [b, t, h/2]
    return jnp.cos(angles)[:, :, None, :], jnp.sin(angles)[:, :, None, :]


def rope_tables(cfg: ModelConfig) -> Rotary:
    """`rotary` of positions 0 .. max_seq_len - 1 as [1, max_seq_len, 1, h/2] tables: what the train
    step takes as an input (`Transformer.__call__(rope=...)`). Inside one program XLA re-fuses the
    cosines into every consumer (each layer's q and k, forward and backward); computed once outside,
    they are read, not recomputed."""
    return rotary(jnp.arange(cfg.max_seq_len)[None, :], cfg.head_dim, cfg.rope_theta)


def rope(x_bthd: jax.Array, rot: Rotary) -> jax.Array:
    """Rotary position embedding (rotate-half convention) by the angles' `rot` = (cos, sin), in float32."""
    cos, sin = rot
    h = x_bthd.shape[-1]
    x = x_bthd.astype(jnp.float32)
    x1, x2 = x[..., : h // 2], x[..., h // 2 :]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_bthd.dtype)


class Attention(nnx.Module):
    N_KEYS = 4  # random keys its initialisation draws

    def __init__(self, cfg: ModelConfig, keys: jax.Array):
        d, n, k, h = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_dim
        pd = jnp.dtype(cfg.param_dtype)
        out_std = cfg.init_std / math.sqrt(2 * cfg.n_layers)
        self.wq = _param(keys[0], (d, n, h), ("embed", "heads", "head_dim"), cfg.init_std, pd)
        self.wk = _param(keys[1], (d, k, h), ("embed", "kv_heads", "head_dim"), cfg.init_std, pd)
        self.wv = _param(keys[2], (d, k, h), ("embed", "kv_heads", "head_dim"), cfg.init_std, pd)
        self.wo = _param(keys[3], (n, h, d), ("heads", "head_dim", "embed"), out_std, pd)
        self.dtype = jnp.dtype(cfg.dtype)
        self.attention = cfg.attention

    def _qkv(self, x_btd, rot: Rotary):
        dt = self.dtype
        q = dense(x_btd, self.wq[...].astype(dt))  # [b, t, n, h]
        k = dense(x_btd, self.wk[...].astype(dt))  # [b, t, k, h]
        v = dense(x_btd, self.wv[...].astype(dt))
        q = constrain(rope(q, rot), ("batch", "length", "act_heads", None))
        k = constrain(rope(k, rot), ("batch", "length", "act_heads", None))
        return q, k, v

    def _out(self, o_btnh):
        return dense(o_btnh, self.wo[...].astype(self.dtype), n_in=2)  # [b, t, d]

    def __call__(self, x_btd, rot: Rotary):
        q, k, v = self._qkv(x_btd, rot)
        return self._out(attention(self.attention, q, k, v))

    def decode(self, x_b1d, positions_b, rot: Rotary, cache_k_bksh, cache_v_bksh):
        """One new position per row against this layer's cache [b, k, s, h]; writes this position's
        k/v into it first (in place when the caller donates the cache). `rot` is the rotary cos/sin of
        `positions_b` ([b, 1, 1, h/2]).

        Heads before positions: each row's keys for one head are contiguous, so the two attention
        contractions are batched matrix-vector products (~9x faster on CPU than [b, s, k, h])."""
        q, k, v = self._qkv(x_b1d, rot)
        b, _, n, h = q.shape
        kv = cache_k_bksh.shape[1]
        rows = jnp.arange(b)
        cache_k = cache_k_bksh.at[rows, :, positions_b].set(k[:, 0].astype(cache_k_bksh.dtype))
        cache_v = cache_v_bksh.at[rows, :, positions_b].set(v[:, 0].astype(cache_v_bksh.dtype))
        q_bkgh = q[:, 0].reshape(b, kv, n // kv, h) * (h**-0.5)
        s = jnp.einsum("bkgh,bksh->bkgs", q_bkgh, cache_k.astype(q.dtype), preferred_element_type=jnp.float32)
        visible_bs = jnp.arange(cache_k.shape[2])[None, :] <= positions_b[:, None]
        p = jax.nn.softmax(jnp.where(visible_bs[:, None, None, :], s, -jnp.inf), axis=-1).astype(q.dtype)
        o = jnp.einsum("bkgs,bksh->bkgh", p, cache_v.astype(q.dtype))
        return self._out(o.reshape(b, 1, n, h)), cache_k, cache_v


class MLP(nnx.Module):
    """SwiGLU: down(silu(x W_gate) * x W_up)."""

    N_KEYS = 3

    def __init__(self, cfg: ModelConfig, keys: jax.Array):
        d, f = cfg.d_model, cfg.d_ff
        pd = jnp.dtype(cfg.param_dtype)
        self.w_gate = _param(keys[0], (d, f), ("embed", "mlp"), cfg.init_std, pd)
        self.w_up = _param(keys[1], (d, f), ("embed", "mlp"), cfg.init_std, pd)
        self.w_down = _param(keys[2], (f, d), ("mlp", "embed"), cfg.init_std / math.sqrt(2 * cfg.n_layers), pd)
        self.dtype = jnp.dtype(cfg.dtype)

    def __call__(self, x_btd):
        dt = self.dtype
        gate_btf = dense(x_btd, self.w_gate[...].astype(dt))
        up_btf = dense(x_btd, self.w_up[...].astype(dt))
        h_btf = constrain(jax.nn.silu(gate_btf) * up_btf, ("batch", "length", "act_mlp"))
        return dense(h_btf, self.w_down[...].astype(dt))


class Block(nnx.Module):
    """One layer; `keys` [N_KEYS] initialise its matrices (the Transformer stacks L of them)."""

    N_KEYS = Attention.N_KEYS + MLP.N_KEYS

    def __init__(self, cfg: ModelConfig, keys: jax.Array):
        pd = jnp.dtype(cfg.param_dtype)
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps, pd)
        self.attn = Attention(cfg, keys[: Attention.N_KEYS])
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps, pd)
        self.mlp = MLP(cfg, keys[Attention.N_KEYS :])

    def __call__(self, x_btd, rot: Rotary):
        x = x_btd + self.attn(self.attn_norm(x_btd), rot)
        x = x + self.mlp(self.mlp_norm(x))
        return constrain(x, ("batch", "length", "act_embed"))

    def decode(self, x_b1d, positions_b, rot: Rotary, cache_k_bksh, cache_v_bksh):
        a, cache_k_bksh, cache_v_bksh = self.attn.decode(self.attn_norm(x_b1d), positions_b, rot, cache_k_bksh,
                                                         cache_v_bksh)
        x = x_b1d + a
        return x + self.mlp(self.mlp_norm(x)), cache_k_bksh, cache_v_bksh


class Transformer(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        cfg.validate()
        self.cfg = cfg
        pd = jnp.dtype(cfg.param_dtype)
        v, d = cfg.padded_vocab, cfg.d_model
        self.embed = _param(rngs.params(), (v, d), ("vocab", "embed"), cfg.init_std, pd)
        # One key per matrix in creation order (embed, block 0, block 1, ..., lm_head): the values do
        # not depend on how the blocks are stacked. nnx.vmap builds the L blocks as one module.
        keys_lk = jnp.stack([rngs.params() for _ in range(cfg.n_layers * Block.N_KEYS)])
        keys_lk = keys_lk.reshape(cfg.n_layers, Block.N_KEYS)
        self.blocks = nnx.vmap(lambda keys_k: Block(cfg, keys_k), in_axes=0, out_axes=0,
                               transform_metadata=_STACKED)(keys_lk)
        self.final_norm = RMSNorm(d, cfg.norm_eps, pd)
        if not cfg.tie_embeddings:
            self.lm_head = _param(rngs.params(), (d, v), ("embed", "vocab"), cfg.init_std, pd)

    # --- pieces used by the patch-level path ----------------------------------------------------
    def embed_tokens(self, tokens_bt: jax.Array) -> jax.Array:
        """Input embeddings [b, t, d] in the compute dtype."""
        # FSDP-style: gather the whole table where it is used, then look rows up locally.
        table = constrain(self.embed[...], (None, None))
        x = jnp.take(table, tokens_bt, axis=0).astype(self.cfg.dtype)
        return constrain(x, ("batch", "length", "act_embed"))

    def logits(self, h_btd: jax.Array) -> jax.Array:
        """LM-head logits [b, t, v] in float32; padded vocabulary ids get -inf."""
        w = self.embed[...].T if self.cfg.tie_embeddings else self.lm_head[...]
        logits = dense(h_btd, w.astype(h_btd.dtype), preferred_element_type=jnp.float32)
        logits = constrain(logits, ("batch", "length", "act_vocab"))
        real = jnp.arange(self.cfg.padded_vocab) < self.cfg.vocab_size
        return jnp.where(real, logits, -jnp.inf)

    def hidden(self, x_btd: jax.Array, rot: Rotary) -> jax.Array:
        """The blocks (one `nnx.scan` over the stacked layers) and the final norm; `rot` is the rotary
        cos/sin of the positions ([b or 1, t, 1, h/2])."""

        def layer(block, x_btd, rot):
            return block(x_btd, rot)

        if self.cfg.remat != "none":
            layer = nnx.remat(layer, policy=CHECKPOINT_POLICIES[self.cfg.remat], prevent_cse=False)
        scan = nnx.scan(layer, in_axes=(0, nnx.Carry, None), out_axes=nnx.Carry, transform_metadata=_STACKED,
                        unroll=min(self.cfg.scan_unroll, self.cfg.n_layers))
        return self.final_norm(scan(self.blocks, x_btd, rot))

    def __call__(self, tokens_bt=None, *, embeddings_btd=None, positions_bt=None, rope: Rotary | None = None
                 ) -> jax.Array:
        """Logits [b, t, v] for token ids, or for given input embeddings (e.g. patch embeddings).

        Positions are 0 .. t-1 unless `positions_bt` is given. `rope` = `rope_tables(cfg)` passed in
        (the train step does) supplies the rotary cos/sin of positions 0 .. t-1 instead of computing them
        here: the same values (tests/test_numerics.py), read rather than recomputed in every layer."""
        if (tokens_bt is None) == (embeddings_btd is None):
            raise ValueError("pass exactly one of tokens_bt or embeddings_btd")
        x = self.embed_tokens(tokens_bt) if embeddings_btd is None else embeddings_btd.astype(self.cfg.dtype)
        t = x.shape[1]
        if rope is not None and positions_bt is not None:
            raise ValueError("pass positions_bt or rope tables (positions 0 .. t-1), not both")
        if rope is not None:
            if t > rope[0].shape[1]:
                raise ValueError(f"{t} positions but rotary tables of {rope[0].shape[1]} (model.max_seq_len)")
            rot = (rope[0][:, :t], rope[1][:, :t])
        else:
            if positions_bt is None:
                positions_bt = jnp.broadcast_to(jnp.arange(t), x.shape[:2])
            rot = rotary(positions_bt, self.cfg.head_dim, self.cfg.rope_theta)
        return self.logits(self.hidden(x, rot))

    # --- incremental decoding --------------------------------------------------------------------
    def init_cache(self, batch: int, length: int, dtype=None) -> KVCache:
        """Zero keys and values, ([b, k, s, h], [b, k, s, h]) per layer, for `batch` rows of `length`
        positions."""
        cfg = self.cfg
        shape = (batch, cfg.kv_heads, length, cfg.head_dim)
        dt = jnp.dtype(dtype or cfg.dtype)
        return tuple((jnp.zeros(shape, dt), jnp.zeros(shape, dt)) for _ in range(cfg.n_layers))

    def unstacked_blocks(self) -> list[Block]:
        """The L blocks as separate modules, each holding its layer's slice of the stacked parameters
        (copies). `decode_step` runs them; a caller that decodes many steps (M1) makes them once,
        outside jit, and passes them in, so no step copies weights out of the stack."""
        graphdef, state = nnx.split(self.blocks)
        return [nnx.merge(graphdef, jax.tree.map(lambda a: a[i], state)) for i in range(self.cfg.n_layers)]

    def decode_step(self, tokens_b: jax.Array, positions_b: jax.Array, cache: KVCache,
                    blocks: list[Block] | None = None):
        """Feed one token per row at its own position; returns (logits_bv float32, new cache).

        `blocks` = `self.unstacked_blocks()` (made here when None). The same values as the scanned
        stack computed: the committed files of tests/test_decode_fixtures.py, made by it, decode."""
        blocks = self.unstacked_blocks() if blocks is None else blocks
        x = self.embed_tokens(tokens_b[:, None])
        rot = rotary(positions_b[:, None], self.cfg.head_dim, self.cfg.rope_theta)
        new_cache = []
        for block, (k_bksh, v_bksh) in zip(blocks, cache, strict=True):
            x, k_bksh, v_bksh = block.decode(x, positions_b, rot, k_bksh, v_bksh)
            new_cache.append((k_bksh, v_bksh))
        return self.logits(self.final_norm(x))[:, 0], tuple(new_cache)


def count_params(cfg: ModelConfig, *, embeddings: bool = True) -> int:
    """Exact parameter count (with the padded vocabulary) without building the model."""
    d, f, n, k, h, v = cfg.d_model, cfg.d_ff, cfg.n_heads, cfg.kv_heads, cfg.head_dim, cfg.padded_vocab
    per_layer = d * n * h * 2 + d * k * h * 2 + 3 * d * f + 2 * d
    total = cfg.n_layers * per_layer + d
    if embeddings:
        total += v * d * (1 if cfg.tie_embeddings else 2)
    return total
