"""The DreamLayer sampler: every layer of a batch of scenes denoised together, one jit.

All steps run inside one `lax.scan` (`schedulers.loop.sample_loop`) with classifier-free
guidance batched in (each layer's unconditional branch uses the empty prompt). IRH
(`pipeline.irh`) takes the model's variant (static, read off the merged UNet's config):

- "box": IRH's box form applied after each step, and from its start the global layer's
  fresh noise shared from its layers' (`irh.share_noise`);
- "paper": two passes in the same jitted function, `irh.denoise_keeping` (the whole
  schedule, trajectory kept) then `irh.reharmonize` (the global layer re-denoised from
  `T_H`, eq. 12 in the window `T_H -> T_H'`) with the foregrounds' alphas decoded from
  pass 1's clean latents (the codec's `AlphaDecoder`, its weights a traced argument).
  `irh.enabled` False skips pass 2 at run time; `T_H`, `T_H'` are traced.

Three modes share it:

- `generate`: text to layers;
- `decompose`: the global layer (and, in the box variant, the background outside the
  foregrounds' boxes) pinned to the picture's DDIM-inverted trajectory at every step;
- `edit`: the kept slots (default: every layer but the global one) reset after each
  step to their saved latents re-noised to that step's level, the others sampled;
  used to re-harmonize the global layer from IRH's start step, and to regenerate a
  re-prompted foreground among kept ones.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding

from dreamlayer_jax.attention.context import LayerContext
from dreamlayer_jax.codecs.base import AlphaDecoder, Compositor
from dreamlayer_jax.models.layer_unet import DreamLayerUNet
from dreamlayer_jax.pipeline.irh import (
    IRHSettings,
    denoise_keeping,
    foreground_mask,
    harmonize,
    layer_alphas,
    reharmonize,
    share_noise,
)
from dreamlayer_jax.pipeline.progress import ProgressHook
from dreamlayer_jax.schedulers.base import SamplingPlan, Scheduler
from dreamlayer_jax.schedulers.loop import sample_loop


def guided(unet: DreamLayerUNet, ctx: LayerContext, uncond: LayerContext,
           guidance: jax.Array, sharding: NamedSharding | None = None,
           guidance_min_t: jax.Array | float = 0.0):
    """`model_fn(x[B, L, h, w, c], t, i)` with classifier-free guidance batched as `2B`.

    `uncond` is the unconditional branch's context: the same layers with empty prompts
    (`DreamLayerPipeline.layer_context`). Steps at timesteps `t < guidance_min_t` use
    the conditional prediction alone (guidance 1).
    """
    uncond = uncond.replace(text=uncond.text.astype(ctx.text.dtype))
    both = jax.tree.map(lambda u, c: jnp.concatenate([u, c]), uncond, ctx)

    def model_fn(x: jax.Array, t: jax.Array, i: jax.Array) -> jax.Array:
        del i
        xx = jnp.concatenate([x, x])
        if sharding is not None:
            xx = jax.lax.with_sharding_constraint(xx, sharding)
        out = unet(xx, t, both).astype(jnp.float32)
        uncond, cond = jnp.split(out, 2)
        scale = jnp.where(t >= guidance_min_t, guidance, 1.0).astype(out.dtype)
        return uncond + scale * (cond - uncond)

    return model_fn


@partial(jax.jit, static_argnames=("graphdef", "sched", "compositor", "mode", "start",
                                   "sharding", "progress", "alpha_decoder"))
def sample_layers(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    sched: Scheduler,
    plan: SamplingPlan,
    ctx: LayerContext,
    uncond: LayerContext,
    x: jax.Array,
    guidance: jax.Array,
    key: jax.Array,
    *,
    compositor: Compositor,
    irh: IRHSettings,
    mode: str = "generate",
    pinned: jax.Array | None = None,
    layer_noise: jax.Array | None = None,
    keep: jax.Array | None = None,
    start: int = 0,
    sharding: NamedSharding | None = None,
    progress: ProgressHook | None = None,
    alpha_decoder: AlphaDecoder | None = None,
    alpha_params: Any = None,
    kept: jax.Array | None = None,
    alphas: jax.Array | None = None,
    guidance_min_t: jax.Array | float = 0.0,
) -> jax.Array:
    """Denoise `x[B, L, h, w, c]` (the sample at step `start`) to clean layer latents.

    Args:
      graphdef, params: `nnx.split(DreamLayerUNet)`.
      ctx: the conditional `LayerContext`; `uncond` the unconditional one (see `guided`).
      guidance: classifier-free guidance scale (traced: changing it does not recompile).
      guidance_min_t: guidance applies at timesteps `t >= guidance_min_t` only (traced).
      key: PRNG key for stochastic schedulers.
      mode: "generate" | "decompose" | "edit" (see the module docstring).
      pinned: "decompose": the picture's inverted latents at the start of each step and
        the clean one, `[S + 1, B, h, w, c]`; "edit": the kept clean layers `[B, L, h, w, c]`.
      layer_noise: "edit": the fixed noise `[B, L, h, w, c]` that re-noises kept layers.
      keep: "edit": `bool[B, L]`, the slots held to `pinned` (default: all but global);
        "decompose": `bool[B, L, h, w, 1]`, the cells held to `pinned` (required).
      sharding: the latents' sharding, e.g. batch over "data" and layers over "layer".
      progress: a `ProgressHook` ticked once per step.
      alpha_decoder, alpha_params: paper variant: the codec's alpha decoding
        (`codecs.alpha.split_alpha_decoder`), needed unless `alphas` is given.
      kept: paper variant: `[S + 1, B, L, h, w, c]` a given pass-1 trajectory (editing,
        eq. 13): pass 1 is skipped (`x`, `mode` and `start` unused) and pass 2 runs.
      alphas: paper variant: `[B, L, h, w, 1]` the foregrounds' alphas for eq. 12
        (default: decoded from the clean latents of pass 1).
    Returns:
      the clean latents `[B, L, h, w, c]`; paper variant: background and foregrounds
      from pass 1, the global layer from pass 2 (pass 1's when IRH is off).
    """
    unet = nnx.merge(graphdef, params)
    num_steps = plan.num_steps
    model_fn = guided(unet, ctx, uncond, guidance, sharding, guidance_min_t)
    paper = unet.config.variant == "paper"
    if mode == "edit":
        held = keep if keep is not None else jnp.arange(x.shape[1]) < x.shape[1] - 1
        held = jnp.broadcast_to(held, x.shape[:2])[..., None, None, None]
    elif mode == "decompose":
        if keep is None:
            raise ValueError("mode='decompose' needs keep, the cells held to pinned "
                             "(`pipeline.decompose.background_keep`)")
        held = keep  # [B, L, h, w, 1]

    def post_step(x: jax.Array, i: jax.Array) -> jax.Array:
        done = i + 1
        if mode == "decompose":
            x = jnp.where(held, pinned[done][:, None].astype(x.dtype), x)
        elif mode == "edit":
            level = jnp.minimum(done, num_steps - 1)
            renoised = sched.add_noise_at_step(plan, level, pinned, layer_noise)
            saved = jnp.where(done >= num_steps, pinned, renoised)
            x = jnp.where(held, saved.astype(x.dtype), x)
        if not paper:
            level = jnp.minimum(done, num_steps - 1)  # the sample is now at step `done`
            scale = jnp.where(done >= num_steps, 1.0, plan.signal_scale[level])
            x = harmonize(irh, compositor, x, ctx, done, num_steps, scale)
        return finish_step(x, i)

    def finish_step(x: jax.Array, i: jax.Array) -> jax.Array:
        if sharding is not None:
            x = jax.lax.with_sharding_constraint(x, sharding)
        if progress is not None:
            progress.step(i)
        return x

    def noise_fn(noise: jax.Array, x: jax.Array, i: jax.Array) -> jax.Array:
        return share_noise(irh, compositor, x, noise, ctx, i, num_steps, plan.signal_scale[i])

    if not paper:
        return sample_loop(sched, plan, model_fn, x, key=key, start=start, post_step=post_step,
                           noise_fn=noise_fn)

    states = None
    if kept is None:
        kept, states = denoise_keeping(sched, plan, model_fn, x, key=key, start=start,
                                       post_step=post_step)
    out = kept[num_steps]
    if alphas is None and alpha_decoder is None:
        raise ValueError("the paper variant's IRH needs alpha_decoder (or alphas)")

    def second_pass() -> jax.Array:
        a = alphas if alphas is not None else layer_alphas(alpha_decoder, alpha_params,
                                                           out, ctx)
        return reharmonize(sched, plan, model_fn, kept, a, foreground_mask(ctx),
                           irh.restart, irh.stop, states=states, key=key,
                           post_step=finish_step)

    g = jax.lax.cond(jnp.asarray(irh.enabled, bool), second_pass, lambda: out[:, -1])
    return out.at[:, -1].set(g)
