"""The diffusers scheduler classes ours mirror, by our names, and Stable Diffusion's
betas: shared by the scheduler tests."""

import diffusers

DIFFUSERS = {
    "ddim": diffusers.DDIMScheduler,
    "ddpm": diffusers.DDPMScheduler,
    "euler": diffusers.EulerDiscreteScheduler,
    "euler_a": diffusers.EulerAncestralDiscreteScheduler,
    "dpm++2m": diffusers.DPMSolverMultistepScheduler,
}
SD = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
