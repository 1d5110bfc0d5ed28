"""The sharding rules, in one table: logical axis names -> mesh axes.

Every array that is laid out on the `("data", "fsdp", "layer")` mesh (`parallel.mesh`)
names its axes logically (`("batch", "layer", "height", "width", "channels")` for
latents), and `RULES` says which mesh axes each logical name is split over, as MaxText
and MaxDiffusion do. `None` means replicated along that axis. Parameters follow one rule
(`PARAM_RULE`): a leaf of at least `min_size` elements is split over `"fsdp"` along its
largest axis that the fsdp size divides, anything else is replicated; Adam moments and
the EMA are laid out like the parameters they follow (`param_shardings` over the whole
train state).

    spec = logical_spec(("batch", "layer", "tokens"))        # P(("data", "fsdp"), "layer", None)
    sharding = logical_sharding(mesh, LAYOUTS["latents"])
    shardings = param_shardings(mesh, state)                  # a pytree of NamedShardings

Mesh axes a rule names but the mesh lacks are dropped (a mesh without "fsdp" shards
batches over "data" alone).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MeshAxes = str | tuple[str, ...] | None

MESH_AXES = ("data", "fsdp", "layer")

RULES: tuple[tuple[str, MeshAxes], ...] = (
    ("batch", ("data", "fsdp")),  # scenes: data parallel, and fsdp's shards of the batch
    ("layer", "layer"),  # the layer axis L of latents, masks, text, the LayerContext
    ("height", None),
    ("width", None),
    ("channels", None),
    ("tokens", None),  # text tokens T
    ("embed", None),  # text embedding width D
    ("box", None),  # (x0, y0, x1, y1)
    ("key_layer", None),  # the key side of `layer_mask [B, L, L]`
    ("heads", None),
    ("head_dim", None),
)
"""Activations and inputs: logical axis -> mesh axes (None: replicated)."""


@dataclass(frozen=True)
class ParamRule:
    """Parameters (and what follows them: Adam moments, EMA): `axis` over the largest
    array axis the mesh axis' size divides, for leaves of at least `min_size` elements."""

    axis: str = "fsdp"
    min_size: int = 1024


PARAM_RULE = ParamRule()

LAYOUTS: dict[str, tuple[str, ...]] = {
    # the train batch (`training.step.BATCH_KEYS`)
    "pixels": ("batch", "layer", "height", "width", "channels"),
    "layer_valid": ("batch", "layer"),
    "boxes": ("batch", "layer", "box"),
    "token_ids": ("batch", "layer", "tokens"),
    "token_ids_2": ("batch", "layer", "tokens"),
    "alphas": ("batch", "layer", "height", "width"),  # a cached batch (data.latent_cache)
    # the sampler's latents and the `LayerContext`'s fields
    "latents": ("batch", "layer", "height", "width", "channels"),
    "roles": ("batch", "layer"),
    "text": ("batch", "layer", "tokens", "embed"),
    "text_embeds": ("batch", "layer", "embed"),
    "time_ids": ("batch", "layer", "embed"),
    "own_tokens": ("batch", "layer", "tokens"),
    "layer_mask": ("batch", "layer", "key_layer"),
    "context_maps": ("batch", "layer", "height", "width"),
    "token_owner": ("batch", "tokens"),
    "timesteps": ("batch",),
}
"""Logical axis names of the arrays that travel sharded, by name."""


def _rule_table(rules: Sequence[tuple[str, MeshAxes]]) -> dict[str, MeshAxes]:
    table: dict[str, MeshAxes] = {}
    for name, axes in rules:
        if name in table:
            raise ValueError(f"sharding rules: {name!r} is given twice")
        table[name] = axes
    return table


def _present(axes: MeshAxes, mesh_axes: Sequence[str] | None) -> MeshAxes:
    """`axes` less the mesh axes the mesh does not have."""
    if axes is None or mesh_axes is None:
        return axes
    kept = tuple(a for a in ((axes,) if isinstance(axes, str) else axes) if a in mesh_axes)
    if not kept:
        return None
    return kept[0] if isinstance(axes, str) else kept


def logical_spec(names: Sequence[str | None], rules: Sequence[tuple[str, MeshAxes]] = RULES,
                 mesh_axes: Sequence[str] | None = None) -> P:
    """The `PartitionSpec` of an array whose axes are `names` (None: replicated)."""
    table = _rule_table(rules)
    spec: list[MeshAxes] = []
    used: set[str] = set()
    for name in names:
        if name is not None and name not in table:
            raise KeyError(f"sharding rules: no rule for logical axis {name!r}")
        axes = _present(table[name], mesh_axes) if name is not None else None
        flat = (axes,) if isinstance(axes, str) else (axes or ())
        if used & set(flat):
            raise ValueError(f"sharding rules: mesh axes {sorted(used & set(flat))} used "
                             f"twice in {tuple(names)}")
        used |= set(flat)
        spec.append(axes)
    return P(*spec)


def logical_sharding(mesh: Mesh, names: Sequence[str | None],
                     rules: Sequence[tuple[str, MeshAxes]] = RULES) -> NamedSharding:
    """`logical_spec(names)` on `mesh`."""
    return NamedSharding(mesh, logical_spec(names, rules, mesh.axis_names))


def layout(name: str, ndim: int | None = None) -> tuple[str | None, ...]:
    """`LAYOUTS[name]`, cut or padded with None to `ndim` axes."""
    names: tuple[str | None, ...] = LAYOUTS[name]
    if ndim is None:
        return names
    return (names + (None,) * ndim)[:ndim]


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def param_spec(shape: Sequence[int], axis_size: int, rule: ParamRule = PARAM_RULE) -> P:
    """`rule.axis` over the largest array axis `axis_size` divides, when the leaf has at
    least `rule.min_size` elements (ties: the first such axis); else replicated."""
    if axis_size <= 1 or int(np.prod(shape)) < rule.min_size:
        return P()
    for axis in sorted(range(len(shape)), key=lambda i: -shape[i]):
        if shape[axis] % axis_size == 0:
            spec: list[str | None] = [None] * len(shape)
            spec[axis] = rule.axis
            return P(*spec)
    return P()


def param_shardings(mesh: Mesh, tree: Any, rule: ParamRule = PARAM_RULE) -> Any:
    """A `NamedSharding` per leaf of `tree` (params, or a whole train state: Adam moments
    and EMA line up with their parameters) by `rule`."""
    size = mesh.shape[rule.axis] if rule.axis in mesh.axis_names else 1
    return jax.tree.map(lambda x: NamedSharding(mesh, param_spec(np.shape(x), size, rule)),
                        tree)


def describe(rules: Sequence[tuple[str, MeshAxes]] = RULES,
             layouts: Mapping[str, tuple[str, ...]] = LAYOUTS) -> str:
    """The table as text (for docs and logs)."""
    lines = [f"{name:>10} -> {axes}" for name, axes in rules]
    lines.append(f"{'params':>10} -> {PARAM_RULE.axis!r} over the largest divisible axis "
                 f"(>= {PARAM_RULE.min_size} elements), else replicated")
    lines += [f"{name:>12}: {logical_spec(names, rules)}" for name, names in layouts.items()]
    return "\n".join(lines)
