"""DDPM ancestral sampling (Ho et al. 2020), as diffusers' DDPMScheduler.

Step i goes from t = timesteps[i] to t_prev = timesteps[i + 1] (-1 after the last, where
alpha_bar is 1), drawing from the Gaussian posterior q(x_prev | x_t, x0):

    x0     = prediction(model_output, x, a_t)            (clipped if clip_sample)
    x_prev = c_x0 x0 + c_x x + std * noise               (no noise when t = 0)
    c_x0   = sqrt(a_prev) beta_t / (1 - a_t),  c_x = sqrt(alpha_t) (1 - a_prev) / (1 - a_t)
    alpha_t = a_t / a_prev, beta_t = 1 - alpha_t
    std^2  = (1 - a_prev) / (1 - a_t) beta_t  ("fixed_small")  or  beta_t  ("fixed_large")

For training, see `forward_process` (add_noise, velocity, get_target, snr).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

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
class DDPMScheduler(Scheduler):
    """DDPM: stochastic at every step but one with t = 0; needs a key per step."""

    kind = "ddpm"

    def set_timesteps(self, num_inference_steps: int) -> SamplingPlan:
        cfg = self.config
        ts = spaced_timesteps(cfg, num_inference_steps)
        ac = self.alphas_cumprod.astype(np.float64)
        prev = np.append(ts[1:], -1)
        a_t = ac[ts]
        a_prev = np.where(prev >= 0, ac[np.maximum(prev, 0)], 1.0)
        alpha = a_t / a_prev
        beta = 1.0 - alpha
        if cfg.variance_type == "fixed_large":
            variance = beta
        else:  # fixed_small, and fixed_small_log (the same std through exp(0.5 log var))
            variance = np.maximum((1.0 - a_prev) / (1.0 - a_t) * beta, 1e-20)
        std = np.where(ts > 0, np.sqrt(variance), 0.0)
        with np.errstate(divide="ignore"):
            sigmas = np.sqrt((1.0 - np.append(a_t, 1.0)) / np.append(a_t, 1.0))
        return SamplingPlan.build(
            timesteps=ts,
            sigmas=sigmas,
            input_scale=np.ones_like(a_t),
            signal_scale=np.sqrt(a_t),
            noise_scale=np.sqrt(1.0 - a_t),
            init_noise_sigma=1.0,
            coefs={
                "alpha_t": a_t,
                "c_x0": np.sqrt(a_prev) * beta / (1.0 - a_t),
                "c_x": np.sqrt(alpha) * (1.0 - a_prev) / (1.0 - a_t),
                "std": std,
            },
            stochastic=True,
        )

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
        cfg = self.config
        dt = compute_dtype(x)
        xf = x.astype(dt)
        x0, _ = predict_x0_eps(
            cfg.prediction_type, model_output.astype(dt), xf, plan.coefs["alpha_t"][i]
        )
        if cfg.clip_sample:
            x0 = jnp.clip(x0, -cfg.clip_sample_range, cfg.clip_sample_range)
        out = plan.coefs["c_x0"][i] * x0 + plan.coefs["c_x"][i] * xf
        out = out + plan.coefs["std"][i] * step_noise(plan, x, key, noise)
        return out.astype(x.dtype), state
