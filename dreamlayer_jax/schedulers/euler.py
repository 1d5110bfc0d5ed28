"""Euler and Euler-ancestral samplers of the sigma-parameterised ODE / SDE (Karras et al.).

Their sample lives in "sigma space": x = x0 + sigma * eps (the VP sample times
sqrt(sigma^2 + 1)), so the model gets `scale_model_input` = x / sqrt(sigma^2 + 1), and
the starting noise has std `init_noise_sigma` (sigma_max, or sqrt(sigma_max^2 + 1) for
"leading" spacing, as diffusers). Step i, from sigma_i to sigma_{i+1}:

    x0 = x - sigma eps  |  x / (sigma^2+1) - sigma / sqrt(sigma^2+1) v  |  sample
    d  = (x - x0) / sigma
    Euler:            x_next = x + d (sigma_{i+1} - sigma_i)
    Euler-ancestral:  x_next = x + d (sigma_down - sigma_i) + sigma_up * noise
    sigma_up = sqrt(sigma_{i+1}^2 (sigma_i^2 - sigma_{i+1}^2) / sigma_i^2)
    sigma_down = sqrt(sigma_{i+1}^2 - sigma_up^2)
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
from dreamlayer_jax.schedulers.noise_schedule import (
    karras_sigmas,
    sigma_table,
    sigma_to_t,
    spaced_timesteps,
)


def _euler_sigmas(sched: Scheduler, num_inference_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(timesteps [S] float32, sigmas [S + 1] float32) of an Euler-family scheduler."""
    cfg = sched.config
    ts = spaced_timesteps(cfg, num_inference_steps, integer=False)
    ac = sched.alphas_cumprod.copy()
    if cfg.rescale_betas_zero_snr:
        ac[-1] = 2.0**-24  # diffusers keeps the last sigma finite this way
    table = sigma_table(ac).astype(np.float32).astype(np.float64)
    sigmas = np.interp(ts.astype(np.float64), np.arange(len(table)), table)
    if cfg.use_karras_sigmas:
        sigmas = karras_sigmas(sigmas[-1], sigmas[0], num_inference_steps)
        ts = sigma_to_t(sigmas, np.log(table)).astype(np.float32)
    last = table[0] if cfg.final_sigmas_type == "sigma_min" else 0.0
    return ts, np.append(sigmas, last).astype(np.float32)


def _euler_plan(
    sched: Scheduler, ts: np.ndarray, sigmas: np.ndarray, coefs: dict, stochastic: bool
) -> SamplingPlan:
    s = sigmas.astype(np.float64)
    top = s.max()
    init = top if sched.config.timestep_spacing in ("linspace", "trailing") else np.sqrt(top**2 + 1)
    return SamplingPlan.build(
        timesteps=ts,
        sigmas=sigmas,
        input_scale=1.0 / np.sqrt(s[:-1] ** 2 + 1.0),
        signal_scale=np.ones_like(s[:-1]),
        noise_scale=s[:-1],
        init_noise_sigma=init,
        coefs=coefs,
        stochastic=stochastic,
    )


def _pred_x0(prediction_type: str, model_output: jax.Array, x: jax.Array, sigma: jax.Array):
    if prediction_type == "epsilon":
        return x - sigma * model_output
    if prediction_type == "v_prediction":
        return model_output * (-sigma / jnp.sqrt(sigma**2 + 1)) + x / (sigma**2 + 1)
    return model_output  # "sample"


@jax.tree_util.register_static
class EulerDiscreteScheduler(Scheduler):
    """Deterministic Euler steps on sigma (diffusers' EulerDiscreteScheduler, s_churn = 0)."""

    kind = "euler"

    def set_timesteps(self, num_inference_steps: int) -> SamplingPlan:
        ts, sigmas = _euler_sigmas(self, num_inference_steps)
        return _euler_plan(self, ts, sigmas, {}, stochastic=False)

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
        xf = x.astype(dt)
        sigma, sigma_next = plan.sigmas[i], plan.sigmas[i + 1]
        x0 = _pred_x0(self.config.prediction_type, model_output.astype(dt), xf, sigma)
        out = xf + (xf - x0) / sigma * (sigma_next - sigma)
        return out.astype(x.dtype), state


@jax.tree_util.register_static
class EulerAncestralDiscreteScheduler(Scheduler):
    """Euler-ancestral: an Euler step to sigma_down, then fresh noise of std sigma_up."""

    kind = "euler_a"

    def set_timesteps(self, num_inference_steps: int) -> SamplingPlan:
        ts, sigmas = _euler_sigmas(self, num_inference_steps)
        s_from, s_to = sigmas[:-1].astype(np.float64), sigmas[1:].astype(np.float64)
        up = np.sqrt(s_to**2 * (s_from**2 - s_to**2) / s_from**2)
        down = np.sqrt(s_to**2 - up**2)
        return _euler_plan(self, ts, sigmas, {"sigma_up": up, "sigma_down": down}, True)

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
        xf = x.astype(dt)
        sigma = plan.sigmas[i]
        x0 = _pred_x0(self.config.prediction_type, model_output.astype(dt), xf, sigma)
        out = xf + (xf - x0) / sigma * (plan.coefs["sigma_down"][i] - sigma)
        out = out + plan.coefs["sigma_up"][i] * step_noise(plan, x, key, noise)
        return out.astype(x.dtype), state
