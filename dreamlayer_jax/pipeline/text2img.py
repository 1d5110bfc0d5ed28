"""`StableDiffusionPipeline`: plain single-image text to image (SD 1.x, 2.x and SDXL).

One jitted function runs the whole sampler (every step in one `lax.scan`, classifier-free
guidance batched as `2N`) and the VAE decode. It is compiled once per (batch, image size,
number of steps, scheduler); the seed and the guidance scale are traced arguments, so
changing them does not recompile.

With LayerDiffuse's public weights it generates transparent images: its SDXL attention
patches (`unet_patches`, merged by `io.layerdiffuse.merge_layerdiffuse_attention`) and its
transparent VAE decoder (`transparency`, loaded by `codecs.layerdiffuse.load_transparency`
as DreamLayer's pipeline does) turn the output into RGBA.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dreamlayer_jax.codecs.layerdiffuse import LayerDiffuseTransparency, load_transparency
from dreamlayer_jax.errors import ConfigError, InputError
from dreamlayer_jax.io import resolve_model_folder
from dreamlayer_jax.io.layerdiffuse import merge_layerdiffuse_attention
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


def decode_images(vae: AutoencoderKL, transparency: LayerDiffuseTransparency | None,
                  latents: jax.Array) -> jax.Array:
    """Latents `[N, h, w, c]` (as the UNet denoises them) -> `uint8 [N, H, W, 3]`, or RGBA
    `[N, H, W, 4]` through LayerDiffuse's decoder, which sees the VAE's RGB in [0, 1] and
    the unscaled latent the VAE decoded."""
    z = latents_to_vae_input(latents, vae.config)
    images = vae.decode(z)
    if transparency is None:
        return to_uint8(images)
    rgb = jnp.clip(images.astype(jnp.float32) / 2 + 0.5, 0, 1)
    return to_uint8(transparency.decode(rgb, z).astype(jnp.float32) * 2 - 1)


def generate(
    unet_graph: nnx.GraphDef,
    vae_graph: nnx.GraphDef,
    transparency_graph: nnx.GraphDef | None,
    sched: Scheduler,
    unet_params: nnx.State,
    vae_params: nnx.State,
    transparency_params: nnx.State | None,
    plan: SamplingPlan,
    context: jax.Array,
    added: AddedCond | None,
    guidance: jax.Array,
    key: jax.Array,
    latent_shape: tuple[int, int, int],
) -> jax.Array:
    """Sample and decode `N` images: `uint8 [N, H, W, 3]` (RGBA `[N, H, W, 4]` with a
    transparency decoder: `transparency_graph` and `_params`, else None).

    Args:
      context: `[2N, T, D]`, the negative prompts' embeddings first, then the prompts'.
      added: SDXL's `text_embeds [2N, P]` and `time_ids [2N, 6]` in the same order, or None.
      guidance: the classifier-free guidance scale (a traced scalar).
      key: drives the initial noise and any stochastic scheduler.
      latent_shape: `(h, w, c)` of one latent (static).
    """
    unet = nnx.merge(unet_graph, unet_params)
    vae = nnx.merge(vae_graph, vae_params)
    transparency = (None if transparency_graph is None
                    else nnx.merge(transparency_graph, transparency_params))
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
    return decode_images(vae, transparency, latents)


class StableDiffusionPipeline:
    """Text to image with a diffusers-format Stable Diffusion folder (SD 1.x, 2.x, SDXL);
    RGBA with LayerDiffuse's transparent decoder (`transparency`)."""

    def __init__(self, unet: UNet2DConditionModel, vae: AutoencoderKL,
                 conditioner: TextConditioner, scheduler: Scheduler, name: str = "",
                 transparency: LayerDiffuseTransparency | None = None):
        self.unet = unet
        self.vae = vae
        self.conditioner = conditioner
        self.scheduler = scheduler
        self.name = name
        self.transparency = transparency
        unet_graph, self._unet_params = nnx.split(unet)
        vae_graph, self._vae_params = nnx.split(vae)
        transparency_graph, self._transparency_params = (
            (None, None) if transparency is None else nnx.split(transparency))
        self._graphs = (unet_graph, vae_graph, transparency_graph)
        self.generate_fn = jax.jit(generate, static_argnums=(0, 1, 2, 3),
                                   static_argnames=("latent_shape",))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, scheduler: str | None = None,
                        dtype: jnp.dtype = jnp.float32,
                        transparency: str | os.PathLike | None = None,
                        transparency_tta: bool = False,
                        unet_patches: Sequence[str | os.PathLike] = ()
                        ) -> StableDiffusionPipeline:
        """Load `unet/`, `vae/`, `text_encoder[_2]/`, `tokenizer[_2]/` and `scheduler/`;
        `scheduler` picks another sampler for the folder's config (e.g. "ddim" for SD's
        PNDM config).

        LayerDiffuse's public weights, as `DreamLayerPipeline.from_pretrained` takes them:
        `unet_patches` (its SDXL attention LoRA / conv diff files or a converted folder)
        are merged into the UNet; `transparency` (its transparent VAE decoder: a bare file
        or a `convert_layerdiffuse` folder; `transparency_tta` its 8-way augmentation)
        makes the images RGBA. Without `transparency` a LayerDiffuse decoder in the
        folder's `transparency_decoder/` is used; the project's own decoder there is not
        (it decodes DreamLayer's layer latents, not a plain model's)."""
        folder: Path = resolve_model_folder(path)
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", dtype=dtype)
        for patch in unet_patches:
            merge_layerdiffuse_attention(unet, patch)
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", dtype=dtype)
        decoder = load_transparency(folder, transparency, augment=transparency_tta,
                                    dtype=dtype)
        if not isinstance(decoder, LayerDiffuseTransparency):
            if decoder is not None and transparency is not None:
                raise ConfigError(f"{str(transparency)!r} is the project's own transparency "
                                  "decoder (for DreamLayer's layer latents); the plain "
                                  "text-to-image pipeline takes LayerDiffuse's")
            decoder = None
        conditioner = TextConditioner.from_pretrained(folder, dtype=dtype)
        sched = load_scheduler(folder / "scheduler", scheduler)
        return cls(unet, vae, conditioner, sched, name=str(path), transparency=decoder)

    def with_scheduler(self, name: str) -> Scheduler:
        return scheduler_from_config(self.scheduler.config.to_dict(), name)

    @property
    def vae_scale_factor(self) -> int:
        return self.vae.config.downscale

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this (the VAE's, and the transparency
        decoder's: 64 for LayerDiffuse's)."""
        if self.transparency is None:
            return self.vae_scale_factor
        return math.lcm(self.vae_scale_factor, self.transparency.decoder.config.multiple)

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
        each); straight RGBA `[N, H, W, 4]` with a transparency decoder. An empty negative
        prompt encodes to zeros on SDXL folders that ask for it
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
            *self._graphs, self.scheduler, self._unet_params, self._vae_params,
            self._transparency_params, plan, context, added, jnp.float32(guidance_scale),
            jax.random.key(seed), latent_shape=latent_shape)
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
        f = self.size_multiple
        for name, value in (("height", height), ("width", width)):
            if not isinstance(value, int | np.integer) or value < f or value % f:
                raise InputError(f"{name} must be a positive multiple of {f}, got {value!r}")
