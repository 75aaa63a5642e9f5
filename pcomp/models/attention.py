"""Causal self-attention kernels, and which one `model.attention` picks on which platform.

All take q [b, t, n, h], k and v [b, t, k, h] (grouped-query attention: n a multiple of k, query head
i attends with KV head i // (n / k)) and return [b, t, n, h], scaled by 1 / sqrt(h).

- `blocked_causal_attention`: per block of queries against the keys at or before it; the CPU's kernel
  (skips the masked upper triangle, ~2x faster than XLA's fused path there).
- `xla_attention`: `jax.nn.dot_product_attention(implementation="xla")`, anything XLA compiles.
- `splash_attention`: Pallas splash attention (block-sparse flash attention written for the TPU).
  Mosaic kernels are not partitioned by XLA's SPMD pass, so it runs under `jax.shard_map` over the
  mesh axes the model's logical-axis rules give q's batch and head axes (`pcomp.models.sharding`):
  each device runs the kernel on its own rows and heads, which needs no communication.
- `cudnn_attention`: `jax.nn.dot_product_attention(implementation="cudnn")`, cuDNN's fused flash
  attention on NVIDIA GPUs (bfloat16 / float16 only; XLA partitions it itself).

`model.attention=auto` picks by the platform of the devices the program is compiled for (the mesh set
with `jax.set_mesh`, so a compile for a TPU topology on a CPU machine picks splash; without a mesh, the
default backend): splash on TPU when the sequence is a multiple of the kernel's 128-position blocks,
cuDNN on GPU for bfloat16 / float16, the blocked kernel on CPU, XLA otherwise.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pcomp.errors import ConfigError
from pcomp.models.sharding import MESH_AXES, logical_to_spec

SPLASH_BLOCK = 128  # splash attention's query / key block (the kernel's default tile)
# q, k, v and the output inside the model: [batch, length, heads, head_dim] (`Attention._qkv`)
QKV_AXES = ("batch", "length", "act_heads", None)


def platform() -> str:
    """The platform ('cpu', 'gpu', 'tpu') of the devices the traced program is for: the mesh's set by
    `jax.set_mesh` (its devices need not exist, e.g. a TPU topology compiled on a CPU machine), else
    the default backend."""
    device = jax.sharding.get_abstract_mesh().abstract_device
    return device.platform if device is not None else jax.default_backend()


def choose(kind: str, seq_len: int, dtype) -> str:
    """The kernel `model.attention=kind` runs at this sequence length and compute dtype, on `platform()`:
    'blocked', 'fused' (XLA), 'splash' or 'cudnn'. An explicit kernel the platform cannot run is a
    one-line ConfigError."""
    where = platform()
    if kind == "auto":
        if where == "cpu":
            return "blocked"
        if where == "tpu" and seq_len % SPLASH_BLOCK == 0:
            return "splash"
        if where == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16):
            return "cudnn"
        return "fused"
    if kind == "splash" and where != "tpu":
        raise ConfigError(f"model.attention=splash runs on TPU only, not {where}; use auto, fused or blocked")
    if kind == "splash" and seq_len % SPLASH_BLOCK:
        raise ConfigError(f"model.attention=splash needs the sequence ({seq_len} positions) to be a multiple of "
                          f"{SPLASH_BLOCK}; use auto or fused")
    if kind == "cudnn" and where != "gpu":
        raise ConfigError(f"model.attention=cudnn runs on NVIDIA GPUs only, not {where}; use auto, fused or blocked")
    return kind


def attention(kind: str, q_btnh, k_btkh, v_btkh) -> jax.Array:
    """Causal attention with the kernel `choose(kind, ...)` picks."""
    chosen = choose(kind, q_btnh.shape[1], q_btnh.dtype)
    if chosen == "blocked":
        return blocked_causal_attention(q_btnh, k_btkh, v_btkh)
    if chosen == "splash":
        return splash_attention(q_btnh, k_btkh, v_btkh)
    if chosen == "cudnn":
        return cudnn_attention(q_btnh, k_btkh, v_btkh)
    return xla_attention(q_btnh, k_btkh, v_btkh)


def xla_attention(q_btnh, k_btkh, v_btkh) -> jax.Array:
    return jax.nn.dot_product_attention(q_btnh, k_btkh, v_btkh, is_causal=True, implementation="xla")


def cudnn_attention(q_btnh, k_btkh, v_btkh) -> jax.Array:
    """cuDNN's fused attention. JAX asks the cuDNN library for its version while tracing, so compiling it
    for a GPU that is not there (`pcomp compile --topology h100:N`) needs cuDNN installed where it runs."""
    try:
        return jax.nn.dot_product_attention(q_btnh, k_btkh, v_btkh, is_causal=True, implementation="cudnn")
    except RuntimeError as e:
        if "cuDNN" not in str(e) or "not found" not in str(e):
            raise
        raise ConfigError("cuDNN attention (model.attention=auto on a GPU, bfloat16) needs the cuDNN library here "
                          "to trace: pip install nvidia-cudnn-cu12, or set model.attention=fused (XLA's)") from None


def blocked_causal_attention(q_btnh, k_btkh, v_btkh, block: int = 64) -> jax.Array:
    """Causal softmax attention computed per block of `block` queries against only the keys at or
    before the block: skips the masked upper triangle (about 40% of the work at t = 256), which
    makes it ~2x faster than the fused XLA path on CPU. Supports grouped-query attention."""
    b, t, n, h = q_btnh.shape
    kv = k_btkh.shape[2]
    if t % block:
        block = t
    q = q_btnh.reshape(b, t, kv, n // kv, h).transpose(0, 2, 3, 1, 4) * (h**-0.5)  # [b, k, g, t, h]
    k = k_btkh.transpose(0, 2, 1, 3)  # [b, k, t, h]
    v = v_btkh.transpose(0, 2, 1, 3)
    outs = []
    for i in range(t // block):
        end = (i + 1) * block
        s = jnp.einsum("bkgqh,bksh->bkgqs", q[:, :, :, i * block : end], k[:, :, :end],
                       preferred_element_type=jnp.float32)
        visible = jnp.arange(end)[None, :] <= (i * block + jnp.arange(block))[:, None]
        p = jax.nn.softmax(jnp.where(visible, s, -jnp.inf), axis=-1).astype(v.dtype)
        outs.append(jnp.einsum("bkgqs,bksh->bkgqh", p, v[:, :, :end]))
    o = jnp.concatenate(outs, axis=3)  # [b, k, g, t, h]
    return o.transpose(0, 3, 1, 2, 4).reshape(b, t, n, h)


def splash_attention(q_btnh, k_btkh, v_btkh, *, interpret: bool = False) -> jax.Array:
    """Pallas splash attention (causal, GQA), per device under `jax.shard_map` when a pcomp mesh is set.

    The batch and head axes are split as the logical-axis rules split them (`QKV_AXES`), so each
    device holds whole sequences of whole heads and the kernel needs no communication; sharding the
    sequence would need a ring of key blocks, which pcomp's rules never ask for (length -> None).
    `interpret=True` runs the kernel in Pallas's interpreter (any platform: the CPU tests)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or tuple(mesh.axis_names) != MESH_AXES:
        return _splash_local(q_btnh, k_btkh, v_btkh, interpret)
    spec = logical_to_spec(QKV_AXES)
    local = lambda q, k, v: _splash_local(q, k, v, interpret)  # noqa: E731
    return jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec, check_vma=False)(
        q_btnh, k_btkh, v_btkh)


def _splash_local(q_btnh, k_btkh, v_btkh, interpret: bool) -> jax.Array:
    """The splash kernel on one device's rows and heads: vmapped over the batch, heads first."""
    from jax.experimental.pallas.ops.tpu import splash_attention as sa

    _, t, n, h = q_btnh.shape
    block = min(SPLASH_BLOCK, t)
    sizes = sa.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                          block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
    mask = sa.MultiHeadMask([sa.CausalMask((t, t))] * n)
    kernel = sa.make_splash_mha(mask, head_shards=1, q_seq_shards=1, block_sizes=sizes, interpret=interpret)
    heads_first = lambda x: x.transpose(0, 2, 1, 3)  # noqa: E731  [b, t, n, h] <-> [b, n, t, h]
    q = heads_first(q_btnh * jnp.asarray(h**-0.5, q_btnh.dtype))  # the kernel does not scale
    o = jax.vmap(kernel)(q, heads_first(k_btkh), heads_first(v_btkh))
    return heads_first(o)
