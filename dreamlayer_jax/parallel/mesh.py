"""The `("data", "fsdp", "layer")` device mesh and the shardings built on it.

- batch axes (`B`) are sharded over `("data", "fsdp")`;
- the layer axis (`L`) of latents and of the `LayerContext` over `"layer"`;
- parameters over `"fsdp"` (their largest divisible axis) and replicated otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dreamlayer_jax.errors import ConfigError

AXES = ("data", "fsdp", "layer")
BATCH = ("data", "fsdp")


def make_mesh(data: int = -1, fsdp: int = 1, layer: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over `devices` (default: all); one axis size may be -1 (the rest)."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = [data, fsdp, layer]
    if sizes.count(-1) > 1:
        raise ConfigError("mesh: at most one of data/fsdp/layer may be -1")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if len(devices) % known:
            raise ConfigError(f"mesh: {len(devices)} devices do not divide by {known}")
        sizes[sizes.index(-1)] = len(devices) // known
    if int(np.prod(sizes)) != len(devices):
        raise ConfigError(f"mesh: data*fsdp*layer = {int(np.prod(sizes))} but there are "
                          f"{len(devices)} devices")
    return Mesh(np.array(devices).reshape(sizes), AXES)


def layer_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """`[B, L, ...]` arrays (latents, layer masks, text): B over data/fsdp, L over layer."""
    return NamedSharding(mesh, P(BATCH, "layer", *([None] * (ndim - 2))))


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """`[B, ...]` arrays: B over data/fsdp."""
    return NamedSharding(mesh, P(BATCH, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def fsdp_spec(shape: Sequence[int], fsdp_size: int, min_size: int = 1024) -> P:
    """Shard a parameter's largest axis divisible by the fsdp size; small ones replicate."""
    if fsdp_size <= 1 or int(np.prod(shape)) < min_size:
        return P()
    order = sorted(range(len(shape)), key=lambda i: -shape[i])
    for axis in order:
        if shape[axis] % fsdp_size == 0:
            spec = [None] * len(shape)
            spec[axis] = "fsdp"
            return P(*spec)
    return P()


def param_shardings(mesh: Mesh, params):
    """NamedShardings for a params pytree: fsdp over each leaf's largest divisible axis."""
    size = mesh.shape["fsdp"]
    return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_spec(x.shape, size)), params)
