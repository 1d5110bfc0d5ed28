"""Whole sampling and DDIM-inversion loops as one `lax.scan` (jit them; they compile once).

`model_fn(model_input, t, i) -> model_output` is any pure function (a UNet call with
classifier-free guidance, layer conditioning, ...); `t` is `plan.timesteps[i]` and `i`
the traced step index, both scalars.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

from dreamlayer_jax.schedulers.base import (
    SamplerState,
    SamplingPlan,
    Scheduler,
    step_noise,
)
from dreamlayer_jax.schedulers.ddim import DDIMScheduler, ddim_invert_step

ModelFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
NoiseFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def sample_loop(
    sched: Scheduler,
    plan: SamplingPlan,
    model_fn: ModelFn,
    x: jax.Array,
    *,
    key: jax.Array | None = None,
    start: int = 0,
    state: SamplerState | None = None,
    return_trajectory: bool = False,
    post_step: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
    noise_fn: NoiseFn | None = None,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Run steps `start .. S-1` from the sample `x` (already scaled by `init_noise_sigma`).

    `post_step(x, i)`, if given, rewrites the sample after step `i` (DreamLayer's IRH,
    pinned layers); it sees the scheduler's output and its result feeds step `i + 1`.

    Stochastic schedulers use the noise of `jax.random.fold_in(key, i)` at step i;
    `noise_fn(noise, x, i)`, if given, rewrites that standard-normal draw (x: the sample
    the step starts from), e.g. to correlate layers (DreamLayer's IRH). With
    `return_trajectory`, also returns the sample after each step, `[S - start, *x.shape]`.
    """
    state = sched.init_state(x.shape) if state is None else state

    def body(carry, i):
        x, state = carry
        out = model_fn(sched.scale_model_input(plan, i, x), plan.timesteps[i], i)
        step_key = None if key is None else jax.random.fold_in(key, i)
        noise = None
        if noise_fn is not None and step_key is not None:
            drawn = step_noise(plan, x, step_key, None)  # None: a deterministic step
            noise = None if drawn is None else noise_fn(drawn, x, i)
        x, state = sched.step(plan, state, i, out, x, key=step_key, noise=noise)
        if post_step is not None:
            x = post_step(x, i)
        return (x, state), (x if return_trajectory else None)

    (x, _), trajectory = lax.scan(body, (x, state), jnp.arange(start, plan.num_steps))
    return (x, trajectory) if return_trajectory else x


def ddim_invert_loop(
    sched: DDIMScheduler, plan: SamplingPlan, model_fn: ModelFn, x0: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Invert clean latents `x0` through every step of `plan`, last step first.

    Returns `(x_T, levels)` where `levels[i]` (`[S, *x0.shape]`) is the inverted latent at
    the start of sampling step i (so `levels[0]` is `x_T`): what image-to-layer
    decomposition pins the global layer to. The model is called at `plan.timesteps[i]`.
    """

    def body(x, i):
        out = model_fn(sched.scale_model_input(plan, i, x), plan.timesteps[i], i)
        x = ddim_invert_step(sched, plan, i, out, x)
        return x, x

    steps = jnp.arange(plan.num_steps - 1, -1, -1)
    x_t, levels = lax.scan(body, x0, steps)
    return x_t, levels[::-1]
