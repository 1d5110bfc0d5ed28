"""The variance-preserving forward process: noising, velocity, training targets, SNR.

x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps with a_t = alphas_cumprod[t]. These read only a
scheduler's `alphas_cumprod`, so any scheduler built from the model's config serves
(diffusers trains with DDPMScheduler). `t` is an integer array broadcast against the
sample from the left: `t` of shape [B] scales `x` of shape [B, ...], `t` of shape [B, L]
scales `[B, L, ...]`, a scalar scales everything.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dreamlayer_jax.errors import ConfigError
from dreamlayer_jax.schedulers.base import Scheduler, compute_dtype


def _alpha_bar(sched: Scheduler, t: jax.Array, like: jax.Array) -> jax.Array:
    """alphas_cumprod[t] shaped to broadcast against `like` (extra trailing unit axes)."""
    t = jnp.asarray(t)
    a = jnp.asarray(sched.alphas_cumprod)[t.astype(jnp.int32)].astype(compute_dtype(like))
    if a.ndim > like.ndim:
        raise ValueError(f"timesteps of shape {t.shape} do not fit a sample of shape {like.shape}")
    return a.reshape(a.shape + (1,) * (like.ndim - a.ndim))


def add_noise(sched: Scheduler, x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
    """x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise, in `x0`'s dtype."""
    a = _alpha_bar(sched, t, x0)
    out = jnp.sqrt(a) * x0.astype(a.dtype) + jnp.sqrt(1.0 - a) * noise.astype(a.dtype)
    return out.astype(x0.dtype)


def velocity(sched: Scheduler, x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
    """v_t = sqrt(a_t) noise - sqrt(1 - a_t) x0 (the v-prediction target), in `x0`'s dtype."""
    a = _alpha_bar(sched, t, x0)
    out = jnp.sqrt(a) * noise.astype(a.dtype) - jnp.sqrt(1.0 - a) * x0.astype(a.dtype)
    return out.astype(x0.dtype)


def get_target(
    sched: Scheduler,
    x0: jax.Array,
    noise: jax.Array,
    t: jax.Array,
    prediction_type: str | None = None,
) -> jax.Array:
    """The regression target of a model of `prediction_type` (default: the scheduler's)."""
    kind = prediction_type or sched.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return velocity(sched, x0, noise, t)
    if kind == "sample":
        return x0
    raise ConfigError(f"prediction_type={kind!r} is not supported")


def snr(sched: Scheduler, t: jax.Array) -> jax.Array:
    """Signal-to-noise ratio a_t / (1 - a_t) at integer timesteps `t` (same shape as `t`)."""
    a = jnp.asarray(sched.alphas_cumprod)[jnp.asarray(t).astype(jnp.int32)]
    return a / (1.0 - a)


def predict_x0_eps(
    prediction_type: str, model_output: jax.Array, x: jax.Array, alpha_bar: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """(x0, eps) implied by a model output at a sample `x` of noise level `alpha_bar`.

    All arrays in the compute dtype; `alpha_bar` broadcasts against `x`.
    """
    root_a, root_b = jnp.sqrt(alpha_bar), jnp.sqrt(1.0 - alpha_bar)
    if prediction_type == "epsilon":
        return (x - root_b * model_output) / root_a, model_output
    if prediction_type == "v_prediction":
        return root_a * x - root_b * model_output, root_a * model_output + root_b * x
    if prediction_type == "sample":
        return model_output, (x - root_a * model_output) / root_b
    raise ConfigError(f"prediction_type={prediction_type!r} is not supported")
