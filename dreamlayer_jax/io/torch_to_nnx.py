"""Converting between PyTorch state dicts (diffusers / transformers names) and nnx params.

The project's modules use the same attribute names as the PyTorch models they port,
so a parameter at nnx path `("down_blocks", 0, "resnets", 1, "conv1", "kernel")` is the
tensor `down_blocks.0.resnets.1.conv1.weight`. Only the leaf name and the layout change:

| nnx leaf                    | torch leaf | layout change                         |
| --------------------------- | ---------- | ------------------------------------- |
| `kernel` of a conv `[kh, kw, in, out]` | `weight` | from `[out, in, kh, kw]`    |
| `kernel` of a linear `[in, out]`       | `weight` | from `[out, in]` (or a 1x1 conv) |
| `scale` (norms)             | `weight`   | none                                  |
| `embedding`                 | `weight`   | none                                  |
| `bias`                      | `bias`     | none                                  |
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util

from dreamlayer_jax.errors import WeightsError

M = TypeVar("M", bound=nnx.Module)
_LEAF_TO_TORCH = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}


def torch_key(path: tuple[Any, ...]) -> str:
    """The PyTorch state-dict key of the nnx parameter at `path`."""
    *parents, leaf = (str(p) for p in path)
    return ".".join([*parents, _LEAF_TO_TORCH.get(leaf, leaf)])


def _to_nnx_layout(leaf: str, value: np.ndarray, target_shape: tuple[int, ...]) -> np.ndarray:
    if leaf != "kernel":
        return value
    if value.ndim == 4 and len(target_shape) == 4:
        return value.transpose(2, 3, 1, 0)
    if value.ndim == 4 and len(target_shape) == 2 and value.shape[2:] == (1, 1):
        return value[:, :, 0, 0].T  # a 1x1 conv stored where we use a linear
    if value.ndim == 2 and len(target_shape) == 2:
        return value.T
    return value


def _to_torch_layout(leaf: str, value: np.ndarray) -> np.ndarray:
    if leaf == "kernel" and value.ndim == 4:
        return value.transpose(3, 2, 0, 1)
    if leaf == "kernel" and value.ndim == 2:
        return value.T
    return value


def _summarise(kind: str, names: list[str]) -> str:
    shown = ", ".join(names[:6])
    more = f" (+{len(names) - 6} more)" if len(names) > 6 else ""
    return f"{len(names)} {kind}: {shown}{more}"


def _convert(
    flat_specs: dict[tuple[Any, ...], Any],
    state_dict: Mapping[str, np.ndarray],
    *,
    what: str,
    dtype: jnp.dtype | None,
    ignore: Iterable[str],
    rename: Callable[[str], str] | None,
) -> dict[tuple[Any, ...], jax.Array]:
    """Match every nnx path of `flat_specs` to its tensor, or raise one `WeightsError`."""
    ignore = tuple(ignore)
    missing: list[str] = []
    misshaped: list[str] = []
    used: set[str] = set()
    new_flat: dict[tuple[Any, ...], jax.Array] = {}
    for path, spec in flat_specs.items():
        key = torch_key(path)
        key = rename(key) if rename else key
        if key not in state_dict:
            missing.append(key)
            continue
        used.add(key)
        value = _to_nnx_layout(str(path[-1]), np.asarray(state_dict[key]), tuple(spec.shape))
        if tuple(value.shape) != tuple(spec.shape):
            expected = _torch_shape(path, spec.shape)
            misshaped.append(f"{key} {tuple(state_dict[key].shape)} (expected {expected})")
            continue
        new_flat[path] = jnp.asarray(value, dtype=dtype or spec.dtype)
    unexpected = sorted(k for k in state_dict if k not in used and not any(s in k for s in ignore))
    problems = [
        _summarise(kind, names)
        for kind, names in (("missing", sorted(missing)), ("unexpected", unexpected),
                            ("mis-shaped", sorted(misshaped)))
        if names
    ]
    if problems:
        raise WeightsError(f"{what} weights do not fit the model: " + "; ".join(problems))
    return new_flat


class ShapeOnlyRngs:
    """Stands in for `nnx.Rngs` while a module is built only for its shapes: every stream
    (`rngs()`, `rngs.params()`, ...) returns one fixed key, and nothing is counted.

    Under `nnx.eval_shape`, each call of a real `nnx.Rngs` updates its counter variable,
    and flax's update reads the traced value's `sharding`, which makes JAX build an error
    message by walking the whole jaxpr traced so far: quadratic in the number of
    parameters (30 s for SD1.5's UNet, minutes for SDXL's). The values drawn here are
    replaced by the loaded weights anyway.
    """

    def __init__(self, seed: int = 0):
        self._key = jax.random.key(seed)

    def __call__(self) -> jax.Array:
        return self._key

    def __getattr__(self, stream: str) -> ShapeOnlyRngs:
        return self


def load_torch_state_into(
    build: Callable[[Any], M],
    state_dict: Mapping[str, np.ndarray],
    *,
    what: str,
    dtype: jnp.dtype | None = None,
    ignore: Iterable[str] = (),
    rename: Callable[[str], str] | None = None,
) -> M:
    """Build the module returned by `build(rngs)` with its parameters taken from `state_dict`.

    `build` is traced abstractly (`nnx.eval_shape`) with a `ShapeOnlyRngs` as `rngs`, so
    no random initialisation is run.
    `ignore` holds key substrings of the state dict that may be present without a
    matching parameter (e.g. `position_ids` buffers); `rename` maps an nnx-derived key
    to the key used in the state dict where the two differ. Every missing, unexpected
    or mis-shaped tensor is reported in one `WeightsError` naming them.
    """
    abstract = nnx.eval_shape(lambda: build(ShapeOnlyRngs()))
    graphdef, state = nnx.split(abstract)
    flat = traverse_util.flatten_dict(nnx.to_pure_dict(state))
    new_flat = _convert(flat, state_dict, what=what, dtype=dtype, ignore=ignore, rename=rename)
    nnx.replace_by_pure_dict(state, traverse_util.unflatten_dict(new_flat))
    return nnx.merge(graphdef, state)


def update_from_torch(
    module: nnx.Module,
    state_dict: Mapping[str, np.ndarray],
    *,
    what: str,
    include: Callable[[tuple[Any, ...]], bool],
    dtype: jnp.dtype | None = None,
) -> None:
    """Set the parameters of `module` selected by `include(path)` from `state_dict`, in place.

    The selected parameters and the state dict must match exactly (same error as above).
    """
    state = nnx.state(module, nnx.Param)
    flat = traverse_util.flatten_dict(nnx.to_pure_dict(state))
    selected = {p: v for p, v in flat.items() if include(p)}
    new_flat = _convert(selected, state_dict, what=what, dtype=dtype, ignore=(), rename=None)
    nnx.update(module, nnx.State(traverse_util.unflatten_dict(new_flat)))


def nnx_state_to_torch(
    module: nnx.Module,
    rename: Callable[[str], str] | None = None,
    include: Callable[[tuple[Any, ...]], bool] | None = None,
) -> dict[str, np.ndarray]:
    """The module's parameters (those `include(path)` selects) as a PyTorch-layout state
    dict of float32 numpy arrays."""
    state = nnx.state(module, nnx.Param)
    flat = traverse_util.flatten_dict(nnx.to_pure_dict(state))
    out: dict[str, np.ndarray] = {}
    for path, value in flat.items():
        if include is not None and not include(path):
            continue
        key = torch_key(path)
        key = rename(key) if rename else key
        array = np.asarray(jax.device_get(value), dtype=np.float32)
        out[key] = np.ascontiguousarray(_to_torch_layout(str(path[-1]), array))
    return out


def _torch_shape(path: tuple[Any, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(_to_torch_layout(str(path[-1]), np.empty(shape, np.int8)).shape)
