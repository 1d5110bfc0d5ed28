"""Diffusion schedulers as pure functions over small pytrees (run inside jit + lax.scan)."""

from dreamlayer_jax.schedulers.base import SamplerState, SamplingPlan, Scheduler
from dreamlayer_jax.schedulers.config import SchedulerConfig
from dreamlayer_jax.schedulers.ddim import DDIMScheduler, ddim_invert_step
from dreamlayer_jax.schedulers.ddpm import DDPMScheduler
from dreamlayer_jax.schedulers.dpm_solver import DPMSolverMultistepScheduler
from dreamlayer_jax.schedulers.euler import (
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
)
from dreamlayer_jax.schedulers.factory import (
    SCHEDULERS,
    load_scheduler,
    save_scheduler,
    scheduler_from_config,
)
from dreamlayer_jax.schedulers.forward_process import (
    add_noise,
    get_target,
    predict_x0_eps,
    snr,
    velocity,
)
from dreamlayer_jax.schedulers.loop import ddim_invert_loop, sample_loop

__all__ = [
    "SCHEDULERS",
    "DDIMScheduler",
    "DDPMScheduler",
    "DPMSolverMultistepScheduler",
    "EulerAncestralDiscreteScheduler",
    "EulerDiscreteScheduler",
    "SamplerState",
    "SamplingPlan",
    "Scheduler",
    "SchedulerConfig",
    "add_noise",
    "ddim_invert_loop",
    "ddim_invert_step",
    "get_target",
    "load_scheduler",
    "predict_x0_eps",
    "sample_loop",
    "save_scheduler",
    "scheduler_from_config",
    "snr",
    "velocity",
]
