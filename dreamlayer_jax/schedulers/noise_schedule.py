"""Host-side noise-schedule tables (numpy): betas, alphas_cumprod, timestep spacings, sigmas.

Everything here runs once, outside `jit`, when a scheduler is built or a sampling plan is
made. Tables follow diffusers' float32 definitions: betas are float32, `alphas_cumprod` is
the cumulative product of the float32 alphas accumulated in float64 (as torch's CPU
`cumprod` does) and stored as float32; derived per-step coefficients are computed in
float64 from those float32 tables and only then rounded to float32.
"""

from __future__ import annotations

import math

import numpy as np

from dreamlayer_jax.errors import ConfigError
from dreamlayer_jax.schedulers.config import SchedulerConfig


def _cosine_betas(num_train_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
    """Betas of the squared-cosine alpha_bar of Nichol & Dhariwal, capped at `max_beta`."""

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    n = num_train_timesteps
    return np.array(
        [min(1.0 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)]
    )


def _rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Shift and scale sqrt(alpha_bar) so that the last step has zero SNR (arXiv 2305.08891)."""
    root = np.sqrt(np.cumprod(1.0 - betas.astype(np.float64)))
    first, last = root[0], root[-1]
    root = (root - last) * (first / (first - last))
    alpha_bar = root**2
    alphas = np.concatenate([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
    return (1.0 - alphas).astype(np.float32)


def make_betas(config: SchedulerConfig) -> np.ndarray:
    """The training betas `[T]` (float32) of `config`."""
    n = config.num_train_timesteps
    if config.trained_betas is not None:
        betas = np.asarray(config.trained_betas, dtype=np.float32)
    elif config.beta_schedule == "linear":
        betas = np.linspace(config.beta_start, config.beta_end, n).astype(np.float32)
    elif config.beta_schedule == "scaled_linear":
        root = np.linspace(config.beta_start**0.5, config.beta_end**0.5, n).astype(np.float32)
        betas = root**2
    elif config.beta_schedule == "squaredcos_cap_v2":
        betas = _cosine_betas(n).astype(np.float32)
    else:  # validated in SchedulerConfig; kept for direct callers
        raise ConfigError(f"beta_schedule={config.beta_schedule!r} is not supported")
    if config.rescale_betas_zero_snr:
        betas = _rescale_zero_terminal_snr(betas)
    return betas


def make_alphas_cumprod(config: SchedulerConfig) -> np.ndarray:
    """alpha_bar_t = prod_{s<=t} (1 - beta_s), `[T]` float32."""
    alphas = 1.0 - make_betas(config)
    return np.cumprod(alphas.astype(np.float64)).astype(np.float32)


def sigma_table(alphas_cumprod: np.ndarray) -> np.ndarray:
    """sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t), `[T]` float64 (inf where alpha_bar is 0)."""
    a = alphas_cumprod.astype(np.float64)
    with np.errstate(divide="ignore"):
        return np.sqrt((1.0 - a) / a)


def check_num_steps(config: SchedulerConfig, num_inference_steps: int) -> None:
    """Refuse step counts outside `[1, num_train_timesteps]`."""
    if not isinstance(num_inference_steps, int | np.integer) or not (
        1 <= num_inference_steps <= config.num_train_timesteps
    ):
        raise ConfigError(
            f"num_inference_steps={num_inference_steps!r} must be an integer in "
            f"[1, {config.num_train_timesteps}]"
        )


def spaced_timesteps(
    config: SchedulerConfig, num_inference_steps: int, *, integer: bool = True
) -> np.ndarray:
    """The `[S]` decreasing timesteps of `config.timestep_spacing` (diffusers' DDIM/Euler rule).

    `linspace` spreads S points over `[0, T-1]`, rounded when `integer` (DDIM, DDPM) and left
    fractional otherwise (Euler); `leading` takes multiples of `T // S` plus `steps_offset`;
    `trailing` counts down from `T - 1` in steps of `T / S`.
    """
    check_num_steps(config, num_inference_steps)
    n, s = config.num_train_timesteps, num_inference_steps
    if config.timestep_spacing == "linspace":
        ts = np.linspace(0, n - 1, s)[::-1]
        ts = ts.round() if integer else ts.astype(np.float32)
    elif config.timestep_spacing == "leading":
        ts = (np.arange(0, s) * (n // s)).round()[::-1] + config.steps_offset
    elif config.timestep_spacing == "trailing":
        ts = np.round(np.arange(n, 0, -n / s)) - 1
    else:
        raise ConfigError(f"timestep_spacing={config.timestep_spacing!r} is not supported")
    return ts.astype(np.int64 if integer else np.float32)


def karras_sigmas(sigma_min: float, sigma_max: float, num_steps: int, rho: float = 7.0):
    """Karras et al. (2022) sigmas `[S]`, decreasing from `sigma_max` to `sigma_min`."""
    ramp = np.linspace(0, 1, num_steps)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def sigma_to_t(sigmas: np.ndarray, log_sigma_table: np.ndarray) -> np.ndarray:
    """Fractional training timesteps of `sigmas`, interpolating linearly in log-sigma."""
    log_sigma = np.log(np.maximum(sigmas, 1e-10))
    dists = log_sigma[None, :] - log_sigma_table[:, None]
    low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigma_table.shape[0] - 2)
    lo, hi = log_sigma_table[low], log_sigma_table[low + 1]
    w = np.clip((lo - log_sigma) / (lo - hi), 0, 1)
    return (1 - w) * low + w * (low + 1)
