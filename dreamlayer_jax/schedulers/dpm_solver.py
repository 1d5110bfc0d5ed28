"""DPM-Solver++ multistep, order 1 or 2 (Lu et al. 2022), as diffusers' default settings.

The sample is variance preserving, x = alpha x0 + sigma eps with alpha = 1/sqrt(s^2 + 1),
sigma = s alpha for the schedule's s. With lambda = log(alpha / sigma),
h = lambda_{i+1} - lambda_i and r = (lambda_i - lambda_{i-1}) / h, step i is

    x0_i   = data prediction of the model output at step i
    x_next = A x + B x0_i + C (x0_i - x0_{i-1})
    A = sigma_{i+1} / sigma_i,  B = alpha_{i+1} (1 - e^{-h}),
    C = B / (2 r)  (midpoint)   or   alpha_{i+1} ((e^{-h} - 1) / h + 1) / r  (heun)

C is 0 (first order) at the first step a run makes (the state holds no previous
prediction yet) and at the last step when `lower_order_final` applies (always with
`final_sigmas_type="zero"`, where the last step returns x0 exactly). All coefficients are
tabulated on the host, so the state is just the previous prediction.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dreamlayer_jax.schedulers.base import (
    ArrayLike,
    SamplerState,
    SamplingPlan,
    Scheduler,
    compute_dtype,
)
from dreamlayer_jax.schedulers.noise_schedule import (
    check_num_steps,
    karras_sigmas,
    sigma_table,
    sigma_to_t,
)


def _dpm_timesteps(sched: Scheduler, num_inference_steps: int) -> np.ndarray:
    """diffusers' DPM-Solver spacing: S + 1 points with the last (t = 0 side) dropped."""
    cfg = sched.config
    check_num_steps(cfg, num_inference_steps)
    n, s = cfg.num_train_timesteps, num_inference_steps
    ac = sched.alphas_cumprod.astype(np.float64)
    with np.errstate(divide="ignore"):
        lambdas = np.log(np.sqrt(ac)) - np.log(np.sqrt(1.0 - ac))
    last = n - int(np.searchsorted(lambdas[::-1], cfg.lambda_min_clipped))
    if cfg.timestep_spacing == "linspace":
        ts = np.linspace(0, last - 1, s + 1).round()[::-1][:-1]
    elif cfg.timestep_spacing == "leading":
        ts = (np.arange(0, s + 1) * (last // (s + 1))).round()[::-1][:-1] + cfg.steps_offset
    else:  # trailing
        ts = np.arange(last, 0, -n / s).round() - 1
    return ts.astype(np.int64)


@jax.tree_util.register_static
class DPMSolverMultistepScheduler(Scheduler):
    """DPM-Solver++(2M): one model call per step, second order from the second step on."""

    kind = "dpm++2m"

    def set_timesteps(self, num_inference_steps: int) -> SamplingPlan:
        cfg = self.config
        ts = _dpm_timesteps(self, num_inference_steps)
        ac = self.alphas_cumprod.copy()
        if cfg.rescale_betas_zero_snr:
            ac[-1] = 2.0**-24
        table = sigma_table(ac).astype(np.float32).astype(np.float64)
        if cfg.use_karras_sigmas:
            s = karras_sigmas(table[0], table[-1], num_inference_steps)
            ts = sigma_to_t(s, np.log(table))
            ts = (ts if cfg.beta_schedule == "squaredcos_cap_v2" else ts.round()).astype(np.int64)
        else:
            s = np.interp(ts.astype(np.float64), np.arange(len(table)), table)
        last = table[0] if cfg.final_sigmas_type == "sigma_min" else 0.0
        sigmas = np.append(s, last).astype(np.float32)
        steps = len(ts)

        sg = sigmas.astype(np.float64)
        alpha = 1.0 / np.sqrt(sg**2 + 1.0)
        sig = sg * alpha
        with np.errstate(divide="ignore", invalid="ignore"):
            lam = np.log(alpha) - np.log(sig)
            h = lam[1:] - lam[:-1]
            a_coef = sig[1:] / sig[:-1]
            b_coef = alpha[1:] * (1.0 - np.exp(-h))
            r = np.concatenate([[np.nan], lam[1:-1] - lam[:-2]]) / h
            if cfg.solver_type == "midpoint":
                c_coef = 0.5 * b_coef / r
            else:
                c_coef = alpha[1:] * ((np.exp(-h) - 1.0) / h + 1.0) / r
        first_order = np.zeros(steps, dtype=bool)
        first_order[0] = True
        if cfg.solver_order == 1:
            first_order[:] = True
        elif cfg.euler_at_final or (cfg.lower_order_final and steps < 15):
            first_order[-1] = True
        if cfg.final_sigmas_type == "zero":
            first_order[-1] = True
        c_coef = np.where(first_order, 0.0, c_coef)
        return SamplingPlan.build(
            timesteps=ts,
            sigmas=sigmas,
            input_scale=np.ones(steps),
            signal_scale=alpha[:-1],
            noise_scale=sig[:-1],
            init_noise_sigma=1.0,
            coefs={
                "alpha": alpha[:-1],
                "sigma": sig[:-1],
                "a": a_coef,
                "b": b_coef,
                "c": c_coef,
            },
            stochastic=False,
        )

    def init_state(
        self, sample_shape: Sequence[int], dtype: jnp.dtype = jnp.float32
    ) -> SamplerState:
        return SamplerState(
            prev_x0=jnp.zeros(tuple(sample_shape), jnp.promote_types(dtype, jnp.float32)),
            has_prev=jnp.zeros((), jnp.float32),
        )

    def _data_prediction(self, model_output: jax.Array, x: jax.Array, alpha, sigma):
        kind = self.config.prediction_type
        if kind == "epsilon":
            return (x - sigma * model_output) / alpha
        if kind == "v_prediction":
            return alpha * x - sigma * model_output
        return model_output  # "sample"

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
        if state.prev_x0 is None:
            raise ValueError("DPM-Solver needs the state from init_state(sample_shape)")
        dt = compute_dtype(x)
        xf = x.astype(dt)
        c = plan.coefs
        x0 = self._data_prediction(model_output.astype(dt), xf, c["alpha"][i], c["sigma"][i])
        second = c["c"][i] * state.has_prev
        out = c["a"][i] * xf + c["b"][i] * x0 + second * (x0 - state.prev_x0.astype(dt))
        new_state = SamplerState(
            prev_x0=x0.astype(state.prev_x0.dtype), has_prev=jnp.ones((), jnp.float32)
        )
        return out.astype(x.dtype), new_state
