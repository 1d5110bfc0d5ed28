"""The `("data", "fsdp", "layer")` device mesh and the shardings built on it.

Which mesh axes each array axis is split over is declared once, in `parallel.rules`:

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
from dreamlayer_jax.parallel import rules
from dreamlayer_jax.parallel.rules import replicated

__all__ = ["AXES", "BATCH", "batch_sharding", "fsdp_spec", "layer_sharding", "make_mesh",
           "param_shardings", "replicated"]

AXES = rules.MESH_AXES
BATCH = rules.logical_spec(("batch",))[0]  # ("data", "fsdp")


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
    return rules.logical_sharding(mesh, ("batch", "layer", *([None] * (ndim - 2))))


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """`[B, ...]` arrays: B over data/fsdp."""
    return rules.logical_sharding(mesh, ("batch", *([None] * (ndim - 1))))


def fsdp_spec(shape: Sequence[int], fsdp_size: int,
              min_size: int = rules.PARAM_RULE.min_size) -> P:
    """Shard a parameter's largest axis divisible by the fsdp size; small ones replicate
    (`rules.PARAM_RULE`)."""
    return rules.param_spec(shape, fsdp_size, rules.ParamRule("fsdp", min_size))


def param_shardings(mesh: Mesh, params):
    """NamedShardings for a params pytree: fsdp over each leaf's largest divisible axis."""
    return rules.param_shardings(mesh, params)
