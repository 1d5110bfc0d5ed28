"""GroupNorm over the channels (last axis) in one pass over the data, as torch computes it.

flax's `nnx.GroupNorm` (with torch's two-pass variance) reads its input three times:
the mean, the variance around it, then the normalisation. This one reads it twice:

1. one fused reduction over the spatial axes gives, per channel `c`, the sums of
   `d = x - x[first pixel, c]` and of `d**2` (shifting by a sample of the channel keeps
   the sums small where a channel's mean is large against its spread);
2. per channel: mean `m_c` and squared deviations `M2_c = sum d**2 - (sum d)**2 / n`;
   per group (Chan et al.'s pairwise combination, on `[N, C]`-sized arrays only):
   `mean_g = mean_c m_c`, `M2_g = sum_c M2_c + n * sum_c (m_c - mean_g)**2`,
   `var_g = M2_g / (n * C/G)` (biased, as torch);
3. one elementwise pass `x * a + b` with per-(sample, channel) `a = scale / sqrt(var + eps)`
   and `b = bias - mean * a` (an activation after it fuses into the same pass).

Statistics are computed in float32 whatever the input dtype. Parameters are `scale`
and `bias` `[C]`, as in `nnx.GroupNorm`, so checkpoints and the diffusers weight
mapping (`weight` -> `scale`) are unchanged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from dreamlayer_jax.errors import ConfigError


class GroupNorm(nnx.Module):
    """`x [N, ..., C] -> [N, ..., C]` normalised over the spatial axes and each group of
    `C / num_groups` channels, then `* scale + bias`."""

    def __init__(self, num_features: int, *, num_groups: int, epsilon: float,
                 dtype: jnp.dtype = jnp.float32, param_dtype: jnp.dtype = jnp.float32,
                 rngs: nnx.Rngs | None = None) -> None:
        del rngs  # deterministic init (ones, zeros)
        if num_features % num_groups:
            raise ConfigError(f"GroupNorm: {num_features} channels do not split into "
                              f"{num_groups} groups")
        self.num_features, self.num_groups = int(num_features), int(num_groups)
        self.epsilon, self.dtype = float(epsilon), dtype
        self.scale = nnx.Param(jnp.ones((num_features,), param_dtype))
        self.bias = nnx.Param(jnp.zeros((num_features,), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        n_batch, channels = x.shape[0], x.shape[-1]
        mean, inv = group_stats(x.reshape(n_batch, -1, channels), self.num_groups,
                                self.epsilon)  # [N, C] each
        a = inv * self.scale.value.astype(jnp.float32)
        b = self.bias.value.astype(jnp.float32) - mean * a
        shape = (n_batch, *([1] * (x.ndim - 2)), channels)
        y = x.astype(jnp.float32) * a.reshape(shape) + b.reshape(shape)
        return y.astype(self.dtype or x.dtype)


def group_stats(x: jax.Array, groups: int, eps: float) -> tuple[jax.Array, jax.Array]:
    """Per-(sample, channel) group mean and `1 / sqrt(var + eps)`, both `float32[N, C]`,
    of `x [N, P, C]` (P spatial positions; module docstring, steps 1-2)."""
    n_batch, positions, channels = x.shape
    xf = x.astype(jnp.float32)
    d = xf - xf[:, :1, :]
    s1, s2 = jnp.sum(d, axis=1), jnp.sum(d * d, axis=1)  # [N, C], one fused pass
    mean_c = xf[:, 0, :] + s1 / positions
    m2_c = jnp.maximum(s2 - s1 * s1 / positions, 0.0)
    per = channels // groups
    mean_c, m2_c = mean_c.reshape(n_batch, groups, per), m2_c.reshape(n_batch, groups, per)
    mean_g = mean_c.mean(axis=-1, keepdims=True)
    m2_g = m2_c.sum(axis=-1, keepdims=True) + positions * jnp.sum(
        jnp.square(mean_c - mean_g), axis=-1, keepdims=True)
    inv_g = jax.lax.rsqrt(m2_g / (positions * per) + eps)
    mean = jnp.broadcast_to(mean_g, mean_c.shape).reshape(n_batch, channels)
    inv = jnp.broadcast_to(inv_g, mean_c.shape).reshape(n_batch, channels)
    return mean, inv
