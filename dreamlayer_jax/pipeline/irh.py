"""Information Retained Harmonization, both forms side by side, as pure functions.

**Box form** (DESIGN.md section 2; `harmonize`, run after every sampler step): at step
`start = round(S * (1 - irh_start))` the global latent is replaced by the composite of
the layer latents; at every later step it is pulled toward the layers' composite with
strength `irh_retain` inside the layers' opacity. The samples are noisy until the last
step, so they are blended, not painted (`composite_layers`), and a stochastic sampler's
fresh noise for the global layer is blended from the layers' the same way
(`share_noise`, before each step from the start on).

**Paper form** (DESIGN.md section 8, paper eq. 12), two passes inside the one jitted
sampler (`pipeline.layer_sampler`):

1. `denoise_keeping`: all layers denoised over the whole schedule, keeping the latents
   at the start of every step (`kept [S + 1, B, L, h, w, c]`, index `S` the clean ones)
   and the scheduler states;
2. `reharmonize`: from the first step whose timestep is `<= T_H` (`restart_index`), the
   global layer is denoised again from its kept latent there, the background and the
   foregrounds pinned to their kept latents; after each step in the window
   `T_H >= t > T_H'` (`irh_window`) the running global latent is replaced by eq. 12
   (`paint_kept`) with the foregrounds' decoded alphas (`layer_alphas`); below `T_H'` it
   runs free. The background and foregrounds of the result are those of pass 1.

`T_H` and `T_H'` are in timestep units (0 .. num_train_timesteps) and traced.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from jax import lax

from dreamlayer_jax.attention.context import LayerContext
from dreamlayer_jax.attention.masks import ROLE_FOREGROUND, box_masks_soft
from dreamlayer_jax.codecs.alpha import latent_alphas
from dreamlayer_jax.codecs.base import AlphaDecoder, Compositor
from dreamlayer_jax.schedulers.base import SamplerState, SamplingPlan, Scheduler
from dreamlayer_jax.schedulers.loop import ModelFn

PostStep = Callable[[jax.Array, jax.Array], jax.Array]


@struct.dataclass
class IRHSettings:
    """`enabled`; box form: `start` (fraction of the steps, counted from the end) and
    `retain` in [0, 1]; paper form: `restart` (`T_H`) and `stop` (`T_H'`), timesteps.

    A pytree of traced values: other settings reuse the compiled sampler.
    """

    enabled: bool | jax.Array = True
    start: float | jax.Array = 0.3
    retain: float | jax.Array = 0.5
    restart: float | jax.Array = 600.0
    stop: float | jax.Array = 400.0

    def start_index(self, num_steps: int) -> int | jax.Array:
        """The step count after which the global latent is first replaced (>= 1); a
        Python int for a Python `start`, traced otherwise."""
        if isinstance(self.start, int | float):
            return max(1, int(round(num_steps * (1.0 - self.start))))
        return jnp.maximum(1, jnp.round(num_steps * (1.0 - self.start)))

    def as_arrays(self) -> IRHSettings:
        return IRHSettings(jnp.asarray(self.enabled, bool), jnp.float32(self.start),
                           jnp.float32(self.retain), jnp.float32(self.restart),
                           jnp.float32(self.stop))


# -- box form ---------------------------------------------------------------------------


def foreground_gates(ctx: LayerContext, h: int, w: int) -> jax.Array:
    """`float32[B, L, h, w, 1]`: each valid foreground's box (soft, dilated by
    `ctx.clear_margin`: where the pipeline's output layer may be opaque), 0 on the
    other slots."""
    boxes = box_masks_soft(ctx.boxes, h, w, ctx.clear_margin)
    gates = boxes * foreground_mask(ctx)[..., None, None]
    return gates[..., None].astype(jnp.float32)


def paint_weights(compositor: Compositor, latents: jax.Array, ctx: LayerContext,
                  signal_scale: float | jax.Array = 1.0) -> jax.Array:
    """Each slot's weight in the layers' composite, `float32[B, L, h, w, 1]`.

    Painting the foregrounds in slot order over the background, a foreground's opacity
    `a_l` is its estimated latent alpha inside its box (`Compositor.latent_alpha(z_l,
    signal_scale)`, or the box when the codec cannot tell); its weight is `a_l prod_{f >
    l} (1 - a_f)`, the background's `prod_f (1 - a_f)`, the global slot's (and padding's)
    0. The weights sum to 1 at every cell.
    """
    b, num_layers, h, w, _ = latents.shape
    gates = foreground_gates(ctx, h, w)
    weights = jnp.zeros((b, num_layers, h, w, 1), jnp.float32)
    clear = jnp.ones((b, h, w, 1), jnp.float32)
    for layer in range(num_layers - 2, 0, -1):  # the top layer first
        alpha = compositor.latent_alpha(latents[:, layer], signal_scale)
        opacity = gates[:, layer] if alpha is None else gates[:, layer] * alpha
        weights = weights.at[:, layer].set(opacity * clear)
        clear = clear * (1.0 - opacity)
    return weights.at[:, 0].set(clear)


def composite_layers(
    compositor: Compositor, latents: jax.Array, ctx: LayerContext,
    signal_scale: float | jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Paint the foreground latents over the background latent in slot (paint) order.

    Clean latents (`signal_scale` None) are painted with the codec's exact "over"
    (`Compositor.latent_over`). A noisy sample `signal_scale * z0 + noise` is blended,
    `sum_l w_l z_l` with the weights of `paint_weights` (the same as `z <- a_l z_l + (1 -
    a_l) z` layer by layer): a convex blend keeps the sample's noise level and leaves it
    untouched outside the foregrounds, where an "over" of noisy values would clip and add
    their noise.

    Args:
      latents: `[B, L, h, w, c]` (slot 0 background, `L-1` global, ignored here).
      signal_scale: the scale of the clean latent in `latents` (a scalar), or None.
    Returns:
      `(composite [B, h, w, c], coverage [B, h, w, 1])`, where `coverage` is the union
      of the foregrounds' opacities (their latent alpha inside their box, or the box).
    """
    weights = paint_weights(compositor, latents, ctx, 1.0 if signal_scale is None
                            else signal_scale)
    coverage = 1.0 - weights[:, 0]
    if signal_scale is not None:
        composite = jnp.sum(weights * latents.astype(jnp.float32), axis=1)
        return composite.astype(latents.dtype), coverage
    gates = foreground_gates(ctx, *latents.shape[2:4]).astype(latents.dtype)
    composite = latents[:, 0]
    for layer in range(1, latents.shape[1] - 1):
        composite = compositor.latent_over(composite, latents[:, layer], gates[:, layer])
    return composite, coverage


def share_noise(settings: IRHSettings, compositor: Compositor, latents: jax.Array,
                noise: jax.Array, ctx: LayerContext, step: jax.Array, num_steps: int,
                signal_scale: float | jax.Array) -> jax.Array:
    """The fresh noise of a stochastic step `step` (traced), shared from IRH's start on.

    Once the global latent has become the layers' composite, fresh noise drawn for it
    alone would make it drift from its layers where it shows them. So its noise becomes
    the composite of theirs, `sum_l w_l n_l + sqrt(1 - sum_l w_l^2) n_g`
    (`paint_weights` of the sample `latents` before the step): still a standard normal
    at every cell, and the background layer's own noise where no foreground covers it.

    Args:
      latents: `[B, L, h, w, c]` the sample the step starts from (its clean latent
        scaled by `signal_scale`); noise: `[B, L, h, w, c]` standard normal.
    Returns:
      `noise` with its global slot replaced when IRH is on and `step >= start`.
    """
    weights = paint_weights(compositor, latents, ctx, signal_scale)
    n = noise.astype(jnp.float32)
    own = jnp.sqrt(jnp.maximum(1.0 - jnp.sum(weights * weights, axis=1), 0.0))
    shared = jnp.sum(weights * n, axis=1) + own * n[:, -1]
    on = jnp.asarray(settings.enabled) & (step >= settings.start_index(num_steps))
    return noise.at[:, -1].set(jnp.where(on, shared, n[:, -1]).astype(noise.dtype))


def harmonize(
    settings: IRHSettings,
    compositor: Compositor,
    latents: jax.Array,
    ctx: LayerContext,
    steps_done: jax.Array,
    num_steps: int,
    signal_scale: float | jax.Array = 1.0,
) -> jax.Array:
    """Apply IRH to `latents[B, L, h, w, c]` after `steps_done` (traced) denoising steps;
    `signal_scale` is the clean latent's scale in that sample (`SamplingPlan.signal_scale`
    of the next step). After the last step the sample is clean and the layers are
    painted exactly; before it they are blended (`composite_layers`)."""
    start = settings.start_index(num_steps)

    def paint(scale: float | jax.Array | None) -> tuple[jax.Array, jax.Array]:
        composite, coverage = composite_layers(compositor, latents, ctx, scale)
        return composite.astype(latents.dtype), coverage.astype(jnp.float32)

    composite, coverage = jax.lax.cond(steps_done >= num_steps, lambda: paint(None),
                                       lambda: paint(signal_scale))
    g = latents[:, -1]
    pulled = g + settings.retain * coverage * (composite - g)
    new_g = jnp.where(steps_done == start, composite, jnp.where(steps_done > start, pulled, g))
    new_g = jnp.where(settings.enabled, new_g, g)
    return latents.at[:, -1].set(new_g.astype(latents.dtype))


# -- paper form -------------------------------------------------------------------------
def restart_index(timesteps: jax.Array, restart: float | jax.Array) -> jax.Array:
    """The first step whose timestep is `<= T_H` (`int32`, traced); `S` if there is none
    (then the second pass makes no step)."""
    below = timesteps <= restart
    return jnp.where(below.any(), jnp.argmax(below), timesteps.shape[0]).astype(jnp.int32)


def irh_window(timesteps: jax.Array, restart: float | jax.Array,
               stop: float | jax.Array) -> jax.Array:
    """`bool[S]`: the steps after which eq. 12 replaces the global latent, those with
    `T_H >= t > T_H'` (empty when `T_H = T_H'`)."""
    return (timesteps <= restart) & (timesteps > stop)


def paint_kept(global_latent: jax.Array, kept: jax.Array, alphas: jax.Array,
               is_fg: jax.Array) -> jax.Array:
    """Paper eq. 12: the kept foregrounds painted over the running global latent.

    `z_g * prod_i (1 - a_i) + sum_i z^i a_i prod_{f > i} (1 - a_f)`, paint order = slot
    order, computed as successive "over" operations.

    Args:
      global_latent: `[B, h, w, c]` the running global latent `z_g`.
      kept: `[B, L, h, w, c]` the kept layer latents `z_t^i` at this step.
      alphas: `[B, L, h, w, 1]` the layers' alphas at latent size, in [0, 1].
      is_fg: `bool[B, L]`; other slots (background, global, padding) contribute nothing.
    Returns:
      `[B, h, w, c]` in `global_latent`'s dtype.
    """
    a = alphas.astype(jnp.float32) * is_fg[:, :, None, None, None]
    out = global_latent.astype(jnp.float32)
    for layer in range(kept.shape[1]):
        out = out * (1.0 - a[:, layer]) + kept[:, layer].astype(jnp.float32) * a[:, layer]
    return out.astype(global_latent.dtype)


def foreground_mask(ctx: LayerContext) -> jax.Array:
    """`bool[B, L]`: the valid foreground slots."""
    return (ctx.roles == ROLE_FOREGROUND) & ctx.layer_valid


def layer_alphas(decoder: AlphaDecoder, params: Any, latents: jax.Array,
                 ctx: LayerContext) -> jax.Array:
    """The foregrounds' decoded alphas at latent size, `float32[B, L, h, w, 1]`.

    `latents[B, L, h, w, c]` are clean; slots 1 .. L-2 are decoded (`codecs.alpha`),
    area-averaged to `h x w` and, like the decoded layers (`DreamLayerPipeline.
    to_results`), cleared outside their box when they have one (a full box otherwise).
    Other slots are zero.
    """
    b, num_layers, h, w, _ = latents.shape
    alphas = jnp.zeros((b, num_layers, h, w, 1), jnp.float32)
    if num_layers <= 2:
        return alphas
    fg = latents[:, 1:-1].reshape(b * (num_layers - 2), h, w, latents.shape[-1])
    decoded = latent_alphas(decoder, params, fg).reshape(b, num_layers - 2, h, w, 1)
    return gate_alphas(alphas.at[:, 1:-1].set(decoded), ctx)


def gate_alphas(alphas: jax.Array, ctx: LayerContext) -> jax.Array:
    """`alphas[B, L, h, w, 1]` cleared outside each layer's box (soft, with the margin)
    and on every slot that is not a valid foreground."""
    return alphas * foreground_gates(ctx, *alphas.shape[2:4])


def _step(sched: Scheduler, plan: SamplingPlan, model_fn: ModelFn, key: jax.Array | None,
          x: jax.Array, state: SamplerState, i: jax.Array) -> tuple[jax.Array, SamplerState]:
    """One sampler step, as `schedulers.loop.sample_loop` makes it."""
    out = model_fn(sched.scale_model_input(plan, i, x), plan.timesteps[i], i)
    step_key = None if key is None else jax.random.fold_in(key, i)
    return sched.step(plan, state, i, out, x, key=step_key)


def denoise_keeping(
    sched: Scheduler, plan: SamplingPlan, model_fn: ModelFn, x: jax.Array, *,
    key: jax.Array | None = None, start: int = 0, post_step: PostStep | None = None,
) -> tuple[jax.Array, SamplerState]:
    """Pass 1: steps `start .. S-1` from `x[B, L, h, w, c]`, keeping the trajectory.

    Returns `(kept [S + 1, B, L, h, w, c], states)`: `kept[i]` the latents at the start of
    step `i` (`x` itself for `i <= start`), `kept[S]` the clean result; `states` the
    scheduler state at the start of each step, leaves `[S, ...]`. `post_step(x, i)` as in
    `sample_loop`.
    """
    state = sched.init_state(x.shape)

    def body(carry, i):
        x, state = carry
        x_next, state_next = _step(sched, plan, model_fn, key, x, state, i)
        if post_step is not None:
            x_next = post_step(x_next, i)
        return (x_next, state_next), (x, state)

    (last, _), (xs, states) = lax.scan(body, (x, state), jnp.arange(start, plan.num_steps))
    if start:
        def pad(a: jax.Array, first: jax.Array) -> jax.Array:
            return jnp.concatenate([jnp.broadcast_to(first, (start, *first.shape)), a])
        xs = pad(xs, x)
        states = jax.tree.map(pad, states, state)
    return jnp.concatenate([xs, last[None]]), states


def reharmonize(
    sched: Scheduler, plan: SamplingPlan, model_fn: ModelFn, kept: jax.Array,
    alphas: jax.Array, is_fg: jax.Array, restart: float | jax.Array, stop: float | jax.Array,
    *, states: SamplerState | None = None, key: jax.Array | None = None,
    post_step: PostStep | None = None, return_trajectory: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Pass 2: the global layer re-denoised from `T_H` with eq. 12 in the window.

    Args:
      kept: `[S + 1, B, L, h, w, c]` the layers' latents at the start of every step
        (`denoise_keeping`; editing passes the edited layers', eq. 13).
      alphas: `[B, L, h, w, 1]` the foregrounds' alphas at latent size.
      is_fg: `bool[B, L]` the slots eq. 12 paints.
      restart, stop: `T_H`, `T_H'` in timestep units (traced: no recompilation).
      states: pass 1's scheduler states (leaves `[S, ...]`), so a multistep scheduler
        resumes where pass 1 was; None: a fresh state at the restart.
      key: the PRNG key of pass 1 (a stochastic step `i` draws the same noise).
      post_step: `post_step(x, i)` after the pinning and eq. 12 (sharding, progress).
      return_trajectory: also return the latents after every step, `[S, B, L, h, w, c]`
        (steps before the restart repeat the restart latents).
    Returns:
      the global latent `[B, h, w, c]` after the last step (kept[S]'s when no step has
      a timestep `<= T_H`).
    """
    num_steps = plan.num_steps
    first = restart_index(plan.timesteps, restart)
    window = irh_window(plan.timesteps, restart, stop)
    x0 = kept[first]
    if states is None:
        state0 = sched.init_state(x0.shape)
    else:
        state0 = jax.tree.map(lambda s: s[jnp.minimum(first, num_steps - 1)], states)

    def run(carry: tuple[jax.Array, SamplerState], i: jax.Array):
        x, state = _step(sched, plan, model_fn, key, *carry, i)
        pinned = kept[i + 1]
        g = x[:, -1]
        g = jnp.where(window[i], paint_kept(g, pinned, alphas, is_fg), g)
        x = pinned.at[:, -1].set(g.astype(pinned.dtype))
        if post_step is not None:
            x = post_step(x, i)
        return x, state

    def body(carry, i):
        carry = lax.cond(i >= first, run, lambda c, i: c, carry, i)
        return carry, (carry[0] if return_trajectory else None)

    (x, _), trajectory = lax.scan(body, (x0, state0), jnp.arange(num_steps))
    return (x[:, -1], trajectory) if return_trajectory else x[:, -1]


# -- settings from the pipeline's arguments --------------------------------------------
def resolve_settings(config: Any, *, enabled: bool = True, start: float | None = None,
                     retain: float | None = None, restart: float | None = None,
                     stop: float | None = None) -> IRHSettings:
    """`IRHSettings` from call arguments, each None taken from the model's
    `DreamLayerConfig` (`irh_start`, `irh_retain`, `irh_restart`, `irh_stop`)."""
    def pick(value: float | None, default: float) -> float:
        return float(default if value is None else value)

    return IRHSettings(enabled=bool(enabled), start=pick(start, config.irh_start),
                       retain=pick(retain, config.irh_retain),
                       restart=pick(restart, config.irh_restart),
                       stop=pick(stop, config.irh_stop))


def settings_record(settings: IRHSettings, variant: str) -> dict[str, Any]:
    """What a result's info (scene.json) records of the IRH that made it: the variant's
    own settings (box: `irh_start`, `irh_retain`; paper: `irh_restart`, `irh_stop`)."""
    record: dict[str, Any] = {"variant": variant, "irh": bool(settings.enabled)}
    if variant == "paper":
        return {**record, "irh_restart": float(settings.restart),
                "irh_stop": float(settings.stop)}
    return {**record, "irh_start": float(settings.start), "irh_retain": float(settings.retain)}
