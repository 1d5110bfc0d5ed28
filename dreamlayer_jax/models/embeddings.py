"""Timestep embeddings of Stable Diffusion's UNet: sinusoidal features and their MLP."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx


def timestep_embedding(
    timesteps: jax.Array,
    dim: int,
    *,
    flip_sin_to_cos: bool,
    freq_shift: float,
    max_period: float = 10000.0,
) -> jax.Array:
    """Sinusoidal features `float32[N, dim]` of `timesteps[N]` (may be fractional).

    Frequency `j` of the `dim // 2` ones is `max_period ** (-j / (dim // 2 - freq_shift))`;
    the features are `[sin, cos]` (or `[cos, sin]` with `flip_sin_to_cos`), zero-padded
    by one column when `dim` is odd.
    """
    half = dim // 2
    exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32)
    freqs = jnp.exp(exponent / (half - freq_shift))
    angles = timesteps.astype(jnp.float32)[:, None] * freqs[None, :]
    sin, cos = jnp.sin(angles), jnp.cos(angles)
    emb = jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


class TimestepEmbedding(nnx.Module):
    """`linear_2(silu(linear_1(x)))`: `[N, in_features] -> [N, out_features]`."""

    def __init__(
        self, in_features: int, out_features: int, *, rngs: nnx.Rngs, dtype: jnp.dtype = jnp.float32
    ):
        self.linear_1 = nnx.Linear(in_features, out_features, dtype=dtype, rngs=rngs)
        self.linear_2 = nnx.Linear(out_features, out_features, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.linear_2(jax.nn.silu(self.linear_1(x)))
