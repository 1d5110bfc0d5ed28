"""DDIM (Song et al. 2021): deterministic for eta = 0, and its exact-in-form inversion.

Step i goes from timestep t = timesteps[i] to t_prev = t - T // S (or to the "final"
alpha_bar, 1 with `set_alpha_to_one`, when t_prev < 0), as diffusers' DDIMScheduler:

    x0, eps = prediction(model_output, x, a_t)           (x0 clipped if clip_sample)
    x_prev  = sqrt(a_prev) x0 + sqrt(1 - a_prev - std^2) eps + std * noise
    std     = eta * sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dreamlayer_jax.errors import ConfigError
from dreamlayer_jax.schedulers.base import (
    ArrayLike,
    SamplerState,
    SamplingPlan,
    Scheduler,
    compute_dtype,
    step_noise,
)
from dreamlayer_jax.schedulers.forward_process import predict_x0_eps
from dreamlayer_jax.schedulers.noise_schedule import spaced_timesteps


@jax.tree_util.register_static
class DDIMScheduler(Scheduler):
    """DDIM sampling; `set_timesteps(S, eta=...)` picks the stochasticity (0: deterministic)."""

    kind = "ddim"

    def set_timesteps(self, num_inference_steps: int, *, eta: float = 0.0) -> SamplingPlan:
        if not eta >= 0.0:
            raise ConfigError(f"DDIM eta={eta!r} must be >= 0")
        cfg = self.config
        ts = spaced_timesteps(cfg, num_inference_steps)
        ac = self.alphas_cumprod.astype(np.float64)
        final = 1.0 if cfg.set_alpha_to_one else ac[0]
        prev = ts - cfg.num_train_timesteps // num_inference_steps
        a_t = ac[ts]
        a_prev = np.where(prev >= 0, ac[np.maximum(prev, 0)], final)
        with np.errstate(divide="ignore", invalid="ignore"):
            variance = (1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev)
            sigmas = np.sqrt((1.0 - np.append(a_t, a_prev[-1])) / np.append(a_t, a_prev[-1]))
        return SamplingPlan.build(
            timesteps=ts,
            sigmas=sigmas,
            input_scale=np.ones_like(a_t),
            signal_scale=np.sqrt(a_t),
            noise_scale=np.sqrt(1.0 - a_t),
            init_noise_sigma=1.0,
            coefs={"alpha_t": a_t, "alpha_prev": a_prev, "std": eta * np.sqrt(variance)},
            stochastic=eta > 0.0,
        )

    def _x0_eps(self, model_output: jax.Array, x: jax.Array, alpha_bar: jax.Array):
        x0, eps = predict_x0_eps(self.config.prediction_type, model_output, x, alpha_bar)
        if self.config.clip_sample:
            r = self.config.clip_sample_range
            x0 = jnp.clip(x0, -r, r)
        return x0, eps

    def step(
        self,
        plan: SamplingPlan,
        state: SamplerState,
        i: ArrayLike,
        model_output: jax.Array,
        x: jax.Array,
        *,
        key: jax.Array | None = None,
        noise: jax.Array | None = None,
    ) -> tuple[jax.Array, SamplerState]:
        dt = compute_dtype(x)
        a_t, a_prev = plan.coefs["alpha_t"][i], plan.coefs["alpha_prev"][i]
        std = plan.coefs["std"][i]
        x0, eps = self._x0_eps(model_output.astype(dt), x.astype(dt), a_t)
        out = jnp.sqrt(a_prev) * x0 + jnp.sqrt(1.0 - a_prev - std**2) * eps
        n = step_noise(plan, x, key, noise)
        if n is not None:
            out = out + std * n
        return out.astype(x.dtype), state


def ddim_invert_step(
    sched: DDIMScheduler,
    plan: SamplingPlan,
    i: ArrayLike,
    model_output: jax.Array,
    x: jax.Array,
) -> jax.Array:
    """Undo sampling step `i` deterministically: from the noise level after step i to t_i.

    `x` is at alpha_prev[i] (the clean level 1 for the last step with `set_alpha_to_one`);
    the result is at timesteps[i]. Run it for i = S-1, S-2, ..., 0. As diffusers'
    DDIMInverseScheduler, the model output is expected for the *target* timestep
    `plan.timesteps[i]` (the source level may have no timestep of its own):

        x0, eps = prediction(model_output, x, a_prev[i]);  x_t = sqrt(a_t) x0 + sqrt(1-a_t) eps
    """
    dt = compute_dtype(x)
    a_src, a_dst = plan.coefs["alpha_prev"][i], plan.coefs["alpha_t"][i]
    x0, eps = sched._x0_eps(model_output.astype(dt), x.astype(dt), a_src)
    return (jnp.sqrt(a_dst) * x0 + jnp.sqrt(1.0 - a_dst) * eps).astype(x.dtype)
