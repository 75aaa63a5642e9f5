"""Logical axis names -> mesh axes (MaxText style), and the device mesh itself.

Every parameter is created with a tuple of logical axis names (its `logical_axes` metadata). One
small table maps those names to the mesh axes `data`, `fsdp` and `tensor`; changing the table
changes the parallelism without touching the model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from pcomp.config import MeshConfig, ModelConfig, check_mesh_fits_model
from pcomp.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axis (or tuple of mesh axes, or None = replicated)
RULES: dict[str, str | tuple[str, ...] | None] = {
    # activations
    "batch": ("data", "fsdp"),
    "length": None,
    "act_embed": None,
    "act_heads": "tensor",
    "act_mlp": "tensor",
    "act_vocab": "tensor",
    # parameters
    "layers": None,  # the stacked blocks' leading axis: every device holds (its shard of) every layer
    "vocab": "tensor",
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "mlp": "tensor",
    "norm": None,
}


def logical_to_spec(axes: Sequence[str | None], rules: dict = RULES) -> P:
    """('embed', 'mlp') -> PartitionSpec('fsdp', 'tensor')."""
    out = []
    for name in axes:
        if name is not None and name not in rules:
            raise ConfigError(f"logical axis {name!r} has no sharding rule; known: {sorted(rules)}")
        out.append(None if name is None else rules[name])
    return P(*out)


def make_mesh(cfg: MeshConfig, devices: Sequence[jax.Device] | None = None,
              model: ModelConfig | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over all (or the given) devices; data=-1 takes the rest.

    A mesh that does not fit the device count, or (with `model`) that does not divide the
    dimensions it shards, is a one-line ConfigError here, before anything is compiled."""
    cfg.validate()
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    sizes = [cfg.data, cfg.fsdp, cfg.tensor]
    if -1 in sizes:
        i = sizes.index(-1)
        rest = math.prod(s for j, s in enumerate(sizes) if j != i)
        if n % rest:
            others = " x ".join(f"{MESH_AXES[j]}={s}" for j, s in enumerate(sizes) if j != i)
            raise ConfigError(f"mesh {others} = {rest} does not divide the {n} available devices")
        sizes[i] = n // rest
    if math.prod(sizes) != n:
        raise ConfigError(
            f"mesh data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} = {math.prod(sizes)} "
            f"does not match the {n} available devices"
        )
    if model is not None:
        check_mesh_fits_model(dict(zip(MESH_AXES, sizes)), model)
    return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


# What each sharded logical parameter axis is, in config terms (for error messages), most telling first.
_AXIS_NAMES = {
    "heads": "model.n_heads",
    "kv_heads": "the KV heads (model.n_kv_heads, 0 = n_heads)",
    "mlp": "model.d_ff",
    "vocab": "the padded vocabulary (model.vocab_size rounded up to a multiple of 128)",
    "embed": "model.d_model",
}


def param_shardings(state, mesh: Mesh):
    """A NamedSharding for every leaf of `state`: Variables by their `logical_axes` metadata, any
    other array (optimizer counts, step) replicated. A mesh axis that does not divide a
    dimension it shards is a ConfigError naming the config value (before anything is compiled)."""
    bad: list[tuple[int, str]] = []

    def one(path, v):
        if not isinstance(v, nnx.Variable):
            return NamedSharding(mesh, P())
        axes = v.get_metadata().get("logical_axes")
        spec = P() if axes is None else logical_to_spec(axes)
        shape = getattr(v.get_value() if hasattr(v, "get_value") else v.value, "shape", None)
        if axes is not None and shape is not None:
            for dim, name, mesh_axes in zip(shape, axes, spec):
                if mesh_axes is None:
                    continue
                mesh_axes = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)
                size = math.prod(mesh.shape[a] for a in mesh_axes)
                if dim % size:
                    where = " x ".join(f"mesh.{a}={mesh.shape[a]}" for a in mesh_axes)
                    what = _AXIS_NAMES.get(name, f"the {name!r} axis")
                    rank = list(_AXIS_NAMES).index(name) if name in _AXIS_NAMES else len(_AXIS_NAMES)
                    bad.append((rank, f"{where} does not divide {what}={dim} (parameter "
                                      f"{jax.tree_util.keystr(path)}, shape {tuple(shape)}); the mesh must "
                                      f"divide every dimension it shards"))
        return v.replace(NamedSharding(mesh, spec))

    out = jax.tree_util.tree_map_with_path(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    if bad:  # the most telling axis, on the parameter with the shortest path (params before optimizer state)
        raise ConfigError(min(bad, key=lambda b: (b[0], len(b[1]), b[1]))[1])
    return out


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Batch arrays [batch, ...]: split over data and fsdp, replicated over tensor."""
    return NamedSharding(mesh, logical_to_spec(("batch",) + (None,) * (ndim - 1)))


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """with_sharding_constraint by logical axes, when tracing under `jax.set_mesh`; else a no-op."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or tuple(mesh.axis_names) != MESH_AXES:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(axes))
