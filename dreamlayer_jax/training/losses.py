"""The denoising objective over the valid layers of a batch of scenes.

One timestep per scene, shared by its layers (DreamLayer denoises layers together):
`t: int32[B]`, noise `[B, L, h, w, c]`, and the regression of the model's output onto
the epsilon / v / sample target, averaged over the elements of valid layers only.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from dreamlayer_jax.schedulers.forward_process import snr


def min_snr_weights(sched, t: jax.Array, gamma: float, prediction_type: str) -> jax.Array:
    """Min-SNR-gamma loss weights `[B]` (Hang et al. 2023); all ones when `gamma <= 0`.

    epsilon: `min(snr, gamma) / snr`; v_prediction: `min(snr, gamma) / (snr + 1)`;
    sample: `min(snr, gamma)`.
    """
    if gamma <= 0:
        return jnp.ones(t.shape, jnp.float32)
    s = snr(sched, t).astype(jnp.float32)
    clipped = jnp.minimum(s, gamma)
    if prediction_type == "epsilon":
        return clipped / s
    if prediction_type == "v_prediction":
        return clipped / (s + 1.0)
    return clipped


def role_weights(roles: jax.Array, weights: Sequence[float]) -> jax.Array:
    """`float32[B, L]`: the loss weight of each slot's role (background, foreground, global)."""
    return jnp.asarray(weights, jnp.float32)[roles]


def layer_mse(pred: jax.Array, target: jax.Array) -> jax.Array:
    """`float32[B, L]`: mean squared error of each layer `[B, L, h, w, c]`."""
    err = jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32))
    return err.mean(axis=tuple(range(2, err.ndim)))


def masked_layer_loss(pred: jax.Array, target: jax.Array, layer_valid: jax.Array,
                      weights: jax.Array | None = None) -> jax.Array:
    """Scalar: `sum(w * mse * valid) / sum(valid)`, i.e. the mean over the elements of
    valid layers (each layer's elements weighted by `weights[B, L]`). Padded layers
    contribute nothing, whatever they hold (NaN included)."""
    valid = layer_valid.astype(bool)
    per_layer = jnp.where(valid, layer_mse(pred, target), 0.0)
    if weights is not None:
        per_layer = per_layer * weights
    return per_layer.sum() / jnp.maximum(valid.sum(), 1).astype(jnp.float32)
