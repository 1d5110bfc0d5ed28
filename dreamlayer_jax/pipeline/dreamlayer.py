"""`DreamLayerPipeline`: text to layers (and the building blocks of decompose / edit).

Decomposition and editing are functions of a pipeline, `pipeline.decompose.decompose(pipe,
...)` and `pipeline.edit.edit(pipe, ...)`: they build on this module, never the reverse.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from dreamlayer_jax.attention.backends import resolve_backend
from dreamlayer_jax.attention.context import LayerContext, make_roles
from dreamlayer_jax.codecs.alpha import split_alpha_decoder
from dreamlayer_jax.data.compositing import to_uint8
from dreamlayer_jax.errors import InputError, NumericalError
from dreamlayer_jax.io import resolve_model_folder
from dreamlayer_jax.io.layerdiffuse import merge_layerdiffuse_attention
from dreamlayer_jax.models.layer_unet import DreamLayerConfig, DreamLayerUNet
from dreamlayer_jax.parallel.rules import layout, logical_sharding, replicated
from dreamlayer_jax.pipeline.builtin import builtin_name, builtin_variant, bundled_builtin
from dreamlayer_jax.pipeline.components import load_codec, load_dreamlayer_unet
from dreamlayer_jax.pipeline.irh import (
    IRHSettings,
    foreground_gates,
    foreground_mask,
    resolve_settings,
    restart_index,
    settings_record,
)
from dreamlayer_jax.pipeline.layer_sampler import sample_layers
from dreamlayer_jax.pipeline.paper_prompts import LayerTokens, check_overflow, concat_layer_tokens
from dreamlayer_jax.pipeline.progress import ProgressHook
from dreamlayer_jax.pipeline.result import LayeredResult
from dreamlayer_jax.pipeline.scene import FULL_BOX, Scene
from dreamlayer_jax.pipeline.text_conditioning import TextConditioner
from dreamlayer_jax.schedulers.base import Scheduler
from dreamlayer_jax.schedulers.factory import load_scheduler, scheduler_from_config

GLOBAL_NOISE_SLOT = 1_000  # the global layer's noise stream, whatever the number of layers


class DreamLayerPipeline:
    """Generates a background, transparent foregrounds and the global picture together.

    The base model is SD 1.x / 2.x (one text encoder) or SDXL (two, plus the pooled text
    and size conditioning every layer gets); `conditioner` hides the difference.
    """

    def __init__(self, unet: DreamLayerUNet, conditioner: TextConditioner, codec: Any,
                 scheduler: Scheduler, name: str = ""):
        self.unet = unet
        self.conditioner = conditioner
        self.codec = codec
        self.scheduler = scheduler
        self.name = name
        self._unet_graph, self._unet_params = nnx.split(unet)
        self._progress = ProgressHook()
        self._decode = jax.jit(lambda z: codec.decode(z))

    @property
    def config(self) -> DreamLayerConfig:
        return self.unet.config

    @property
    def max_foregrounds(self) -> int:
        return self.config.max_layers - 2

    @property
    def progress_hook(self) -> ProgressHook:
        """The hook the sampler ticks when called with `progress=True` (`listen` on it)."""
        return self._progress

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None, *,
                        scheduler: str | None = None, dtype: jnp.dtype = jnp.float32,
                        dreamlayer: Mapping[str, Any] | None = None,
                        transparency: str | os.PathLike | None = None,
                        transparency_tta: bool = False,
                        unet_patches: Sequence[str | os.PathLike] = ()) -> DreamLayerPipeline:
        """Load a DreamLayer (or plain Stable Diffusion) folder or hub id; no argument:
        the built-in model. `scheduler` overrides the folder's scheduler kind,
        `dreamlayer` fields of its `DreamLayerConfig` (`components.load_dreamlayer_unet`).

        LayerDiffuse's public weights: `transparency` is its transparent VAE decoder (a
        bare file or a `convert_layerdiffuse` folder; `transparency_tta` its 8-way
        augmentation), `unet_patches` its SDXL attention LoRA / conv diff files, merged
        into the UNet (`io.layerdiffuse.merge_layerdiffuse_attention`)."""
        # "builtin", "builtin:box", "builtin:paper" (as scene.json records them) name the
        # built-in models, unless a folder of that name is here
        variant = builtin_variant(path)
        if variant is not None:
            path = bundled_builtin(variant)
            name = builtin_name(path) or "builtin"
        else:
            name = str(path)
        folder = resolve_model_folder(path)
        unet = load_dreamlayer_unet(folder, dtype, dreamlayer)
        for patch in unet_patches:
            merge_layerdiffuse_attention(unet, patch)
        conditioner = TextConditioner.from_pretrained(folder, dtype=dtype)
        codec = load_codec(folder, unet.config, dtype, transparency=transparency,
                           augment=transparency_tta)
        sched = load_scheduler(folder / "scheduler", scheduler)
        return cls(unet, conditioner, codec, sched, name=name)

    def with_scheduler(self, name: str) -> Scheduler:
        return scheduler_from_config(self.scheduler.config.to_dict(), name)

    # -- text -----------------------------------------------------------------------
    def encode_prompts(self, prompts: Sequence[str]) -> jax.Array:
        """`[N, T, D]` text embeddings (`condition` also gives SDXL's added ones)."""
        return self.condition(prompts)[0]

    def condition(self, prompts: Sequence[str], *, zero_empty: bool = False
                  ) -> tuple[jax.Array, dict[str, jax.Array] | None]:
        """`(text [N, T, D], added)` for prompts drawn at the model's resolution: `added`
        is SDXL's `text_embeds [N, P]` and `time_ids [N, 6]`, None for SD 1.x / 2.x.
        Prompts longer than the tokenizer's limit are truncated with a warning."""
        for prompt in self.conditioner.truncated(prompts):
            warnings.warn(f"prompt truncated to {self.conditioner.max_length} tokens: "
                          f"{prompt[:40]!r}...", stacklevel=3)
        size = (self.config.resolution, self.config.resolution)
        return self.conditioner(prompts, size, zero_empty=zero_empty)

    def layer_context(self, scenes: Sequence[Scene], *, caca: bool = True, lssa: bool = True,
                      lssa_scope: str = "global") -> tuple[LayerContext, LayerContext]:
        """The batch's `LayerContext` (padded to the largest scene) and the unconditional
        branch's: the same layers with empty prompts (zeros where SDXL's
        `force_zeros_for_empty_prompt` says so).

        Box variant: every foreground needs a box. Paper variant: a box is optional (a
        prior on the layer's context map), and the global layer reads the layers'
        prompts concatenated (`paper_prompts`; too long a concatenation is refused).
        """
        paper = self.config.variant == "paper"
        num_layers = max(len(s.layers) for s in scenes) + 2
        valid = np.zeros((len(scenes), num_layers), bool)
        boxes = np.tile(np.array(FULL_BOX, np.float32), (len(scenes), num_layers, 1))
        prompts = []
        for b, scene in enumerate(scenes):
            k = len(scene.layers)
            valid[b, : k + 1] = valid[b, -1] = True
            for i, layer in enumerate(scene.layers, start=1):
                if layer.box is None and not paper:
                    raise InputError(f"foreground {i} ({layer.prompt!r}) has no box, and this "
                                     "model (box variant) places every foreground in a box: "
                                     "give one, e.g. --layer 'a red star@0.1,0.5,0.45,0.9'")
                if layer.box is not None:
                    boxes[b, i] = layer.box
            slots = [scene.background, *(l.prompt for l in scene.layers)]
            # paper: the global slot's ids are rebuilt from the layers' prompts below
            prompts += slots + [""] * (num_layers - 1 - len(slots)) + [
                "" if paper else scene.prompt]
        per_layer = (len(scenes), num_layers)
        layer_valid = jnp.asarray(valid)
        paper_fields: dict[str, Any] = {}
        ids = None
        if paper:
            tokens = self._paper_tokens(prompts, layer_valid, per_layer)
            check_overflow(tokens[0], self.conditioner.max_length)
            ids = [t.ids.reshape(-1, t.ids.shape[-1]) for t in tokens]
            paper_fields = {"token_owner": tokens[0].token_owner,
                            "own_tokens": tokens[0].own_tokens}
        for prompt in self.conditioner.truncated(prompts):
            warnings.warn(f"prompt truncated to {self.conditioner.max_length} tokens: "
                          f"{prompt[:40]!r}...", stacklevel=2)
        size = (self.config.resolution, self.config.resolution)
        text, added = jax.tree.map(lambda a: a.reshape(*per_layer, *a.shape[1:]),
                                   self.conditioner(prompts, size, ids=ids))
        empty = jax.tree.map(lambda a: jnp.broadcast_to(a, (*per_layer, *a.shape[1:])),
                             self.condition([""], zero_empty=True))
        ctx = LayerContext(layer_valid=layer_valid, roles=make_roles(layer_valid),
                           boxes=jnp.asarray(boxes), text=text, added=added, caca=caca,
                           lssa=lssa, lssa_scope=lssa_scope, box_margin=self.config.box_margin,
                           clear_margin=self.config.clear_margin,
                           attention_backend=resolve_backend(self.config.attention_backend),
                           variant=self.config.variant, **paper_fields)
        uncond = ctx.replace(text=empty[0], added=empty[1])
        if paper:  # no prompt: no token belongs to any layer
            uncond = uncond.replace(token_owner=jnp.full_like(ctx.token_owner, -1),
                                    own_tokens=jnp.zeros_like(ctx.own_tokens))
        return ctx, uncond

    def _paper_tokens(self, prompts: Sequence[str], layer_valid: jax.Array,
                      per_layer: tuple[int, int]) -> list[LayerTokens]:
        """Each tokenizer's ids `[B, L, T]` with the global slot rebuilt from the layers."""
        out = []
        for ids, (eos, pad) in zip(self.conditioner.tokenize(prompts),
                                   self.conditioner.special_ids(), strict=True):
            ids = jnp.asarray(ids).reshape(*per_layer, -1)
            out.append(concat_layer_tokens(ids, layer_valid, eos_id=eos, pad_id=pad))
        return out

    def initial_noise(self, seeds: Sequence[int], num_layers: int, shape: tuple[int, ...]
                      ) -> jax.Array:
        """Unit noise `[B, L, h, w, c]`: scene `b`'s layer in slot `l` draws from
        `fold_in(key(seed_b), l)` (the global layer from a fixed stream), so the same
        seed gives the same noise however the batch is padded."""
        def one(seed):
            key = jax.random.key(seed)
            slots = [*range(num_layers - 1), GLOBAL_NOISE_SLOT]
            return jnp.stack([jax.random.normal(jax.random.fold_in(key, s), shape)
                              for s in slots])
        return jnp.stack([one(s) for s in seeds])

    def latent_shape(self, resolution: int | None = None) -> tuple[int, int, int]:
        res = resolution or self.config.resolution
        f = self.codec.downsample
        return (res // f, res // f, self.codec.latent_channels)

    # -- sampling -------------------------------------------------------------------
    def __call__(self, scene: Scene | Sequence[Scene], num_inference_steps: int = 30,
                 guidance_scale: float = 5.0, seed: int | Sequence[int] = 0, *,
                 scheduler: str | None = None, caca: bool = True, lssa: bool = True,
                 irh: bool = True, irh_start: float | None = None,
                 irh_retain: float | None = None, irh_restart: float | None = None,
                 irh_stop: float | None = None, lssa_scope: str = "global",
                 guidance_min_timestep: float | None = None,
                 mesh: Mesh | None = None, progress: bool = False
                 ) -> LayeredResult | list[LayeredResult]:
        """Sample one scene (or a batch of scenes) as layers; see `LayeredResult`.

        `guidance_min_timestep`: classifier-free guidance only at timesteps at or above
        it, the conditional prediction alone below (None: the model's
        `guidance_min_timestep`, 0 = every step).

        IRH (`pipeline.irh`): box variant `irh_start`, `irh_retain`; paper variant
        `irh_restart` (`T_H`) and `irh_stop` (`T_H'`), timesteps; None: the model's.
        """
        scenes = [scene] if isinstance(scene, Scene) else list(scene)
        if not scenes:
            raise InputError("no scene to sample")
        seeds = [seed] * len(scenes) if isinstance(seed, int) else list(seed)
        settings = resolve_settings(self.config, enabled=irh, start=irh_start,
                                    retain=irh_retain, restart=irh_restart, stop=irh_stop)
        window = None
        if self.config.variant == "paper" or irh_restart is not None or irh_stop is not None:
            window = (settings.restart, settings.stop)
        self._check_sampling_args(scenes, num_inference_steps, guidance_scale, seeds,
                                  irh_window=window)
        if guidance_min_timestep is None:
            guidance_min_timestep = self.config.guidance_min_timestep
        if not np.isfinite(guidance_min_timestep) or guidance_min_timestep < 0:
            raise InputError("guidance_min_timestep must be a timestep >= 0, got "
                             f"{guidance_min_timestep!r}")
        sched = self.with_scheduler(scheduler) if scheduler else self.scheduler
        plan = sched.set_timesteps(num_inference_steps)
        ctx, uncond = self.layer_context(scenes, caca=caca, lssa=lssa, lssa_scope=lssa_scope)
        noise = self.initial_noise(seeds, ctx.num_layers, self.latent_shape())
        x = noise * sched.init_noise_sigma(plan)
        latents = self.run_sampler(sched, plan, ctx, uncond, x, guidance_scale, seeds[0],
                                   settings, mesh=mesh, progress=progress,
                                   guidance_min_t=guidance_min_timestep)
        results = self.to_results(scenes, latents, ctx, info={
            "seed": seeds, "steps": num_inference_steps, "guidance_scale": guidance_scale,
            "guidance_min_timestep": float(guidance_min_timestep),
            "scheduler": sched.kind, "model": self.name, "caca": caca, "lssa": lssa,
            **settings_record(settings, self.config.variant)})
        return results[0] if isinstance(scene, Scene) else results

    def run_sampler(self, sched: Scheduler, plan, ctx: LayerContext, uncond: LayerContext,
                    x: jax.Array, guidance_scale: float, seed: int, settings: IRHSettings, *,
                    mode: str = "generate", pinned: jax.Array | None = None,
                    layer_noise: jax.Array | None = None, keep: jax.Array | None = None,
                    start: int = 0, kept: jax.Array | None = None,
                    alphas: jax.Array | None = None,
                    mesh: Mesh | None = None, progress: bool = False,
                    guidance_min_t: float | None = None) -> jax.Array:
        """Run the jitted sampler; with a `mesh`, latents are laid out `[B, L]` over
        `("data", "fsdp") x "layer"` and the parameters replicated. `guidance_min_t`:
        guidance only at timesteps at or above it (None: the model's setting).

        Paper variant: the codec's alpha decoder goes in split (`codecs.alpha`, its
        weights a traced argument); `kept` / `alphas` as `sample_layers` takes them.
        """
        params, sharding = self._unet_params, None
        decoder, alpha_params, steps = None, None, plan.num_steps - start
        if self.config.variant == "paper":
            decoder, alpha_params = split_alpha_decoder(self.codec)
            steps = 0 if kept is not None else steps
            if settings.enabled:
                steps += plan.num_steps - int(restart_index(plan.timesteps, settings.restart))
        if mesh is not None:
            sharding = logical_sharding(mesh, layout("latents", x.ndim))
            x = jax.device_put(x, sharding)
            # the paper variant's LSSA runs partitioned over a "layer" axis of size > 1
            ctx, uncond = (c.replace(mesh=mesh) for c in (ctx, uncond))
            ctx, uncond = (jax.device_put(c, c.shardings(mesh)) for c in (ctx, uncond))
            params, alpha_params = jax.device_put((params, alpha_params), replicated(mesh))
        with self._progress.bar(steps, enabled=progress):
            return sample_layers(
                self._unet_graph, params, sched, plan, ctx, uncond, x,
                jnp.float32(guidance_scale), jax.random.key(seed),
                compositor=self.codec.compositor, irh=settings.as_arrays(), mode=mode,
                pinned=pinned,
                layer_noise=layer_noise, keep=keep, start=start, sharding=sharding,
                progress=self._progress if progress else None, alpha_decoder=decoder,
                alpha_params=alpha_params, kept=kept, alphas=alphas,
                guidance_min_t=jnp.float32(self.config.guidance_min_timestep
                                           if guidance_min_t is None else guidance_min_t))

    def _check_sampling_args(self, scenes, steps, guidance, seeds, *,
                             irh_window: tuple[float, float] | None = None) -> None:
        """Refuse bad sampling arguments (one InputError line) before any work.

        `irh_window`: the paper form's `(T_H, T_H')`, each in [0, num_train_timesteps]
        and `T_H' <= T_H`."""
        if irh_window is not None:
            top = self.scheduler.num_train_timesteps
            for name, value in zip(("irh_restart", "irh_stop"), irh_window, strict=True):
                if not np.isfinite(value) or not 0 <= value <= top:
                    raise InputError(f"{name} must be a timestep in [0, {top}], got {value!r}")
            if irh_window[1] > irh_window[0]:
                raise InputError(f"irh_stop (T_H' = {irh_window[1]:g}) must not exceed "
                                 f"irh_restart (T_H = {irh_window[0]:g})")
        for s in scenes:
            if not isinstance(s, Scene):
                raise InputError(f"expected a Scene, got {type(s).__name__}")
            s.check_fits(self.max_foregrounds)
        if not isinstance(steps, int | np.integer) or steps < 1:
            raise InputError(f"num_inference_steps must be a positive integer, got {steps!r}")
        if not np.isfinite(guidance) or guidance < 0:
            raise InputError(f"guidance_scale must be >= 0, got {guidance!r}")
        if len(seeds) != len(scenes):
            raise InputError(f"{len(seeds)} seeds for {len(scenes)} scenes")

    # -- decoding -------------------------------------------------------------------
    def to_results(self, scenes: Sequence[Scene], latents: jax.Array, ctx: LayerContext,
                   info: dict[str, Any]) -> list[LayeredResult]:
        """Decode `latents[B, L, h, w, c]` into pictures; refuses non-finite latents."""
        latents = np.asarray(jax.device_get(latents), np.float32)
        if not np.isfinite(latents).all():
            raise NumericalError("the sampled latents contain NaN or Inf (numerical overflow); "
                                 "run in float32 or bfloat16 instead of float16")
        b, num_layers = latents.shape[:2]
        rgba = np.array(self._decode(jnp.asarray(latents.reshape(b * num_layers,
                                                                   *latents.shape[2:]))))
        rgba = rgba.reshape(b, num_layers, *rgba.shape[1:])
        # A foreground lives in its box: no opacity outside it (plus `clear_margin`), the
        # same gates IRH composites the layers with.
        gates = np.asarray(foreground_gates(ctx, *rgba.shape[2:4]))[..., 0]
        is_fg = np.asarray(foreground_mask(ctx))
        rgba[..., 3] *= np.where(is_fg[..., None, None], gates, 1.0)
        rgba = to_uint8(rgba)
        results = []
        for i, scene in enumerate(scenes):
            k = len(scene.layers)
            slots = [*range(k + 1), num_layers - 1]
            scene_info = {**info, "seed": info["seed"][i]} if "seed" in info else info
            results.append(LayeredResult(
                scene=scene, background=rgba[i, 0, ..., :3].copy(),
                layers=[rgba[i, l].copy() for l in range(1, k + 1)],
                composite=rgba[i, -1, ..., :3].copy(), info=scene_info,
                latents=latents[i, slots]))
        return results
