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


def param_shardings(state, mesh: Mesh):
    """A NamedSharding for every leaf of `state`: Variables by their `logical_axes` metadata, any
    other array (optimizer counts, step, rng) replicated."""

    def one(v):
        if not isinstance(v, nnx.Variable):
            return NamedSharding(mesh, P())
        axes = v.get_metadata().get("logical_axes")
        spec = P() if axes is None else logical_to_spec(axes)
        return v.replace(NamedSharding(mesh, spec))

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Batch arrays [batch, ...]: split over data and fsdp, replicated over tensor."""
    return NamedSharding(mesh, logical_to_spec(("batch",) + (None,) * (ndim - 1)))


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """with_sharding_constraint by logical axes, when tracing under `jax.set_mesh`; else a no-op."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or tuple(mesh.axis_names) != MESH_AXES:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(axes))
