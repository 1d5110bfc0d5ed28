"""The DreamLayer sampler: every layer of a batch of scenes denoised together, one jit.

All steps run inside one `lax.scan` (`schedulers.loop.sample_loop`) with classifier-free
guidance batched in (each layer's unconditional branch uses the empty prompt) and IRH
applied after each step. Three modes share it:

- `generate`: text to layers;
- `decompose`: the global layer pinned to a DDIM-inverted trajectory at every step;
- `edit`: the kept slots (default: every layer but the global one) reset after each
  step to their saved latents re-noised to that step's level, the others sampled;
  used to re-harmonize the global layer from IRH's start step, and to regenerate a
  re-prompted foreground among kept ones.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding

from dreamlayer_jax.attention.context import LayerContext
from dreamlayer_jax.codecs.base import Compositor
from dreamlayer_jax.models.layer_unet import DreamLayerUNet
from dreamlayer_jax.pipeline.irh import IRHSettings, harmonize
from dreamlayer_jax.pipeline.progress import ProgressHook
from dreamlayer_jax.schedulers.base import SamplingPlan, Scheduler
from dreamlayer_jax.schedulers.loop import sample_loop


def guided(unet: DreamLayerUNet, ctx: LayerContext, uncond: LayerContext,
           guidance: jax.Array, sharding: NamedSharding | None = None):
    """`model_fn(x[B, L, h, w, c], t, i)` with classifier-free guidance batched as `2B`.

    `uncond` is the unconditional branch's context: the same layers with empty prompts
    (`DreamLayerPipeline.layer_context`).
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
        return uncond + guidance * (cond - uncond)

    return model_fn


@partial(jax.jit, static_argnames=("graphdef", "sched", "compositor", "mode", "start",
                                   "sharding", "progress"))
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
) -> jax.Array:
    """Denoise `x[B, L, h, w, c]` (the sample at step `start`) to clean layer latents.

    Args:
      graphdef, params: `nnx.split(DreamLayerUNet)`.
      ctx: the conditional `LayerContext`; `uncond` the unconditional one (see `guided`).
      guidance: classifier-free guidance scale (traced: changing it does not recompile).
      key: PRNG key for stochastic schedulers.
      mode: "generate" | "decompose" | "edit" (see the module docstring).
      pinned: "decompose": the global layer's latents at the start of each step and the
        clean one, `[S + 1, B, h, w, c]`; "edit": the kept clean layers `[B, L, h, w, c]`.
      layer_noise: "edit": the fixed noise `[B, L, h, w, c]` that re-noises kept layers.
      keep: "edit": `bool[B, L]`, the slots held to `pinned` (default: all but global).
      sharding: the latents' sharding, e.g. batch over "data" and layers over "layer".
      progress: a `ProgressHook` ticked once per step.
    """
    unet = nnx.merge(graphdef, params)
    num_steps = plan.num_steps
    model_fn = guided(unet, ctx, uncond, guidance, sharding)
    if mode == "edit":
        held = keep if keep is not None else jnp.arange(x.shape[1]) < x.shape[1] - 1
        held = jnp.broadcast_to(held, x.shape[:2])

    def post_step(x: jax.Array, i: jax.Array) -> jax.Array:
        done = i + 1
        if mode == "decompose":
            x = x.at[:, -1].set(pinned[done].astype(x.dtype))
        elif mode == "edit":
            level = jnp.minimum(done, num_steps - 1)
            renoised = sched.add_noise_at_step(plan, level, pinned, layer_noise)
            kept = jnp.where(done >= num_steps, pinned, renoised)
            x = jnp.where(held[..., None, None, None], kept.astype(x.dtype), x)
        x = harmonize(irh, compositor, x, ctx, done, num_steps)
        if sharding is not None:
            x = jax.lax.with_sharding_constraint(x, sharding)
        if progress is not None:
            progress.step(i)
        return x

    return sample_loop(sched, plan, model_fn, x, key=key, start=start, post_step=post_step)
