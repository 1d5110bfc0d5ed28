"""The train state (a pytree: what a checkpoint holds) and its EMA of the weights."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct


@struct.dataclass
class TrainState:
    """Everything a step reads and writes.

    Attributes:
      step: `int32[]` steps taken (skipped non-finite steps included).
      params: the UNet's parameters, an nnx pure dict, float32 master weights.
      opt_state: the optax state.
      ema: exponential moving average of `params` (what is exported and sampled), over
        the trained leaves only: a frozen leaf is its own average, so its slot holds an
        empty `optax.MaskedNode` (LoRA on SDXL keeps no 10 GB copy of the base).
      rng: `uint32[2]` raw base key; step `s` draws from `fold_in(rng, s)`.
      nonfinite: `int32[]` consecutive skipped (non-finite) steps.
      skipped: `int32[]` skipped steps in total.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    ema: Any
    rng: jax.Array
    nonfinite: jax.Array
    skipped: jax.Array


def init_train_state(params: Any, tx: optax.GradientTransformation, seed: int,
                     trained: Any = None) -> TrainState:
    """A fresh state: step 0, EMA equal to the weights; `trained` (booleans per leaf,
    default all True) says which leaves the EMA follows."""
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    trained = jax.tree.map(lambda _: True, params) if trained is None else trained
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
        ema=jax.tree.map(lambda p, t: jnp.copy(p) if t else optax.MaskedNode(), params, trained),
        rng=jax.random.key_data(jax.random.key(seed)),
        nonfinite=jnp.zeros((), jnp.int32), skipped=jnp.zeros((), jnp.int32))


def _is_masked(x: Any) -> bool:
    return isinstance(x, optax.MaskedNode)


def ema_update(ema: Any, params: Any, decay: float | jax.Array) -> Any:
    """`ema <- decay * ema + (1 - decay) * params` on the leaves the EMA follows."""
    return jax.tree.map(lambda e, p: e if _is_masked(e) else decay * e + (1.0 - decay) * p,
                        ema, params, is_leaf=_is_masked)


def ema_weights(ema: Any, params: Any) -> Any:
    """The full set of averaged weights: the EMA where it is kept, `params` (frozen,
    hence their own average) elsewhere."""
    return jax.tree.map(lambda e, p: p if _is_masked(e) else e, ema, params,
                        is_leaf=_is_masked)


def ema_decay_at(step: jax.Array, decay: float) -> jax.Array:
    """The EMA decay warmed up as `min(decay, (1 + n) / (10 + n))`, so early weights
    do not dominate the average of a short run."""
    n = step.astype(jnp.float32)
    return jnp.minimum(jnp.float32(decay), (1.0 + n) / (10.0 + n))
