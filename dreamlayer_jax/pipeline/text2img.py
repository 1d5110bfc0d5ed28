"""`StableDiffusionPipeline`: plain single-image text to image (SD 1.x, 2.x and SDXL).

One jitted function runs the whole sampler (every step in one `lax.scan`, classifier-free
guidance batched as `2N`) and the VAE decode. It is compiled once per (batch, image size,
number of steps, scheduler); the seed and the guidance scale are traced arguments, so
changing them does not recompile.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dreamlayer_jax.errors import InputError
from dreamlayer_jax.io import resolve_model_folder
from dreamlayer_jax.models.unet import UNet2DConditionModel
from dreamlayer_jax.models.vae import AutoencoderKL, VAEConfig
from dreamlayer_jax.pipeline.text_conditioning import AddedCond, TextConditioner
from dreamlayer_jax.schedulers.base import SamplingPlan, Scheduler
from dreamlayer_jax.schedulers.factory import load_scheduler, scheduler_from_config
from dreamlayer_jax.schedulers.loop import sample_loop


def latents_to_vae_input(latents: jax.Array, config: VAEConfig) -> jax.Array:
    """Undo the latent normalisation the UNet works in (`scaling_factor`, and SDXL's
    optional `latents_mean` / `latents_std` or SD3-style `shift_factor`)."""
    if config.latents_mean is not None and config.latents_std is not None:
        mean = jnp.asarray(config.latents_mean, latents.dtype)
        std = jnp.asarray(config.latents_std, latents.dtype)
        return latents * std / config.scaling_factor + mean
    latents = latents / config.scaling_factor
    return latents if config.shift_factor is None else latents + config.shift_factor


def to_uint8(images: jax.Array) -> jax.Array:
    """VAE output in `[-1, 1]` -> `uint8` (rounded, clipped)."""
    return jnp.round(jnp.clip(images.astype(jnp.float32) / 2 + 0.5, 0, 1) * 255).astype(jnp.uint8)


def generate(
    unet_graph: nnx.GraphDef,
    vae_graph: nnx.GraphDef,
    sched: Scheduler,
    unet_params: nnx.State,
    vae_params: nnx.State,
    plan: SamplingPlan,
    context: jax.Array,
    added: AddedCond | None,
    guidance: jax.Array,
    key: jax.Array,
    latent_shape: tuple[int, int, int],
) -> jax.Array:
    """Sample and decode `N` images: `uint8 [N, H, W, 3]`.

    Args:
      context: `[2N, T, D]`, the negative prompts' embeddings first, then the prompts'.
      added: SDXL's `text_embeds [2N, P]` and `time_ids [2N, 6]` in the same order, or None.
      guidance: the classifier-free guidance scale (a traced scalar).
      key: drives the initial noise and any stochastic scheduler.
      latent_shape: `(h, w, c)` of one latent (static).
    """
    unet = nnx.merge(unet_graph, unet_params)
    vae = nnx.merge(vae_graph, vae_params)
    n = context.shape[0] // 2
    noise_key, step_key = jax.random.split(key)
    x = jax.random.normal(noise_key, (n, *latent_shape), jnp.float32)
    x = x * sched.init_noise_sigma(plan)

    def model_fn(x: jax.Array, t: jax.Array, i: jax.Array) -> jax.Array:
        del i
        out = unet(jnp.concatenate([x, x]), t, context, added).astype(jnp.float32)
        uncond, cond = jnp.split(out, 2)
        return uncond + guidance * (cond - uncond)

    latents = sample_loop(sched, plan, model_fn, x, key=step_key if plan.stochastic else None)
    return to_uint8(vae.decode(latents_to_vae_input(latents, vae.config)))


class StableDiffusionPipeline:
    """Text to image with a diffusers-format Stable Diffusion folder (SD 1.x, 2.x, SDXL)."""

    def __init__(self, unet: UNet2DConditionModel, vae: AutoencoderKL,
                 conditioner: TextConditioner, scheduler: Scheduler, name: str = ""):
        self.unet = unet
        self.vae = vae
        self.conditioner = conditioner
        self.scheduler = scheduler
        self.name = name
        unet_graph, self._unet_params = nnx.split(unet)
        vae_graph, self._vae_params = nnx.split(vae)
        self._graphs = (unet_graph, vae_graph)
        self.generate_fn = jax.jit(generate, static_argnums=(0, 1, 2),
                                   static_argnames=("latent_shape",))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, scheduler: str | None = None,
                        dtype: jnp.dtype = jnp.float32) -> StableDiffusionPipeline:
        """Load `unet/`, `vae/`, `text_encoder[_2]/`, `tokenizer[_2]/` and `scheduler/`;
        `scheduler` picks another sampler for the folder's config (e.g. "ddim" for SD's
        PNDM config)."""
        folder: Path = resolve_model_folder(path)
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", dtype=dtype)
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", dtype=dtype)
        conditioner = TextConditioner.from_pretrained(folder, dtype=dtype)
        sched = load_scheduler(folder / "scheduler", scheduler)
        return cls(unet, vae, conditioner, sched, name=str(path))

    def with_scheduler(self, name: str) -> Scheduler:
        return scheduler_from_config(self.scheduler.config.to_dict(), name)

    @property
    def vae_scale_factor(self) -> int:
        return self.vae.config.downscale

    @property
    def default_size(self) -> tuple[int, int]:
        """`(height, width)` in pixels the UNet was trained at."""
        size = self.unet.config.sample_size or 64
        h, w = (size, size) if isinstance(size, int) else size
        return h * self.vae_scale_factor, w * self.vae_scale_factor

    def __call__(self, prompts: str | Sequence[str], negative_prompt: str | Sequence[str] = "",
                 num_inference_steps: int = 30, guidance_scale: float = 7.5, seed: int = 0,
                 height: int | None = None, width: int | None = None
                 ) -> np.ndarray:
        """Images `uint8 [N, H, W, 3]` for `N` prompts (one negative prompt for all, or one
        each). An empty negative prompt encodes to zeros on SDXL folders that ask for it
        (`force_zeros_for_empty_prompt`)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        negatives = ([negative_prompt] * len(prompts) if isinstance(negative_prompt, str)
                     else list(negative_prompt))
        height = height or self.default_size[0]
        width = width or self.default_size[1]
        self._check_args(prompts, negatives, num_inference_steps, guidance_scale, height, width)
        size = (height, width)
        cond, cond_added = self.conditioner(prompts, size)
        uncond, uncond_added = self.conditioner(negatives, size, zero_empty=True)
        context = jnp.concatenate([uncond, cond])
        added = None
        if cond_added is not None:
            added = {k: jnp.concatenate([uncond_added[k], cond_added[k]]) for k in cond_added}
        f = self.vae_scale_factor
        latent_shape = (height // f, width // f, self.unet.config.in_channels)
        plan = self.scheduler.set_timesteps(num_inference_steps)
        images = self.generate_fn(
            *self._graphs, self.scheduler, self._unet_params, self._vae_params, plan, context,
            added, jnp.float32(guidance_scale), jax.random.key(seed), latent_shape=latent_shape)
        return np.asarray(images)

    def _check_args(self, prompts: list[Any], negatives: list[Any], steps: Any, guidance: Any,
                    height: int, width: int) -> None:
        if not prompts or not all(isinstance(p, str) for p in prompts + negatives):
            raise InputError("prompts must be a non-empty list of strings")
        if len(negatives) != len(prompts):
            raise InputError(f"{len(negatives)} negative prompts for {len(prompts)} prompts")
        if not isinstance(steps, int | np.integer) or steps < 1:
            raise InputError(f"num_inference_steps must be a positive integer, got {steps!r}")
        if not np.isfinite(guidance) or guidance < 0:
            raise InputError(f"guidance_scale must be >= 0, got {guidance!r}")
        f = self.vae_scale_factor
        for name, value in (("height", height), ("width", width)):
            if not isinstance(value, int | np.integer) or value < f or value % f:
                raise InputError(f"{name} must be a positive multiple of {f}, got {value!r}")
