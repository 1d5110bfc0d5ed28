"""The jitted, sharded train step of the denoising objective.

Frozen text encoder inside the step: the prompts' token ids `[B, L, T]` are encoded by
the text encoder under `stop_gradient` (its parameters are an argument, replicated, never
updated), and the codec encodes the RGBA pixels to latents in the step too (PixelCodec:
a few elementwise ops). So a batch travels as pixels + token ids, and the step is one
XLA program: encode, noise, predict, loss, gradient, AdamW, EMA, skip-if-non-finite.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from dreamlayer_jax.attention.context import LayerContext, make_roles
from dreamlayer_jax.parallel.mesh import fsdp_spec, layer_sharding, replicated
from dreamlayer_jax.schedulers.forward_process import add_noise, get_target
from dreamlayer_jax.training.config import TrainConfig
from dreamlayer_jax.training.losses import masked_layer_loss, min_snr_weights, role_weights
from dreamlayer_jax.training.optimizer import learning_rate_schedule, trained_mask
from dreamlayer_jax.training.state import TrainState, ema_decay_at, ema_update

BATCH_KEYS = {"pixels": 5, "layer_valid": 2, "boxes": 3, "token_ids": 3}  # name -> ndim

StepFn = Callable[[TrainState, Any, dict[str, jax.Array]], tuple[TrainState, dict[str, Any]]]


def state_shardings(mesh: Mesh, state: TrainState) -> TrainState:
    """Every leaf sharded over `"fsdp"` along its largest divisible axis (params, Adam
    moments and EMA alike, so they line up); small leaves replicated."""
    size = mesh.shape["fsdp"]
    return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_spec(np.shape(x), size)), state)


def batch_shardings(mesh: Mesh) -> dict[str, NamedSharding]:
    """`[B, L, ...]` batch arrays: B over ("data", "fsdp"), L over "layer"."""
    return {name: layer_sharding(mesh, ndim) for name, ndim in BATCH_KEYS.items()}


def _cast(tree: Any, dtype: jnp.dtype) -> Any:
    return jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def make_loss_fn(cfg: TrainConfig, unet_graph: nnx.GraphDef, text_graph: nnx.GraphDef,
                 codec: Any, sched: Any, box_margin: float,
                 attention_backend: str = "xla") -> Callable:
    """`loss(params, text_params, batch, key) -> (loss, aux)` for one micro-batch;
    `attention_backend` is a concrete kernel (`attention.backends.resolve_backend`)."""
    prediction_type = cfg.prediction_type or sched.config.prediction_type
    num_train_timesteps = int(sched.config.num_train_timesteps)
    compute_dtype = jnp.bfloat16 if cfg.compute_dtype == "bfloat16" else jnp.float32

    def encode_text(text_params, token_ids):
        b, num_layers, length = token_ids.shape
        text_model = nnx.merge(text_graph, text_params)
        emb = text_model(token_ids.reshape(b * num_layers, length)).last_hidden_state
        return jax.lax.stop_gradient(emb.reshape(b, num_layers, length, emb.shape[-1]))

    def loss_fn(params, text_params, batch, key):
        pixels, layer_valid = batch["pixels"], batch["layer_valid"]
        b, num_layers = layer_valid.shape
        x0 = codec.encode(pixels.reshape(b * num_layers, *pixels.shape[2:]))
        x0 = jax.lax.stop_gradient(x0.reshape(b, num_layers, *x0.shape[1:]))
        key_t, key_noise = jax.random.split(key)
        t = jax.random.randint(key_t, (b,), 0, num_train_timesteps)  # one t per scene
        noise = jax.random.normal(key_noise, x0.shape, jnp.float32)
        x_t = add_noise(sched, x0, noise, t)
        target = get_target(sched, x0, noise, t, prediction_type)
        roles = make_roles(layer_valid)
        ctx = LayerContext(
            layer_valid=layer_valid, roles=roles, boxes=batch["boxes"],
            text=encode_text(text_params, batch["token_ids"]).astype(compute_dtype),
            caca=cfg.caca, lssa=cfg.lssa, box_margin=box_margin,
            attention_backend=attention_backend)
        model = nnx.merge(unet_graph, _cast(params, compute_dtype))
        pred = model(x_t.astype(compute_dtype), jnp.broadcast_to(t[:, None], (b, num_layers)), ctx)
        weights = role_weights(roles, cfg.role_loss_weights)
        weights = weights * min_snr_weights(sched, t, cfg.min_snr_gamma, prediction_type)[:, None]
        loss = masked_layer_loss(pred, target, layer_valid, weights)
        return loss, {"t_mean": t.astype(jnp.float32).mean()}

    return loss_fn


def make_train_step(cfg: TrainConfig, tx: optax.GradientTransformation,
                    loss_fn: Callable, params: Any) -> Callable:
    """The un-jitted step `(state, text_params, batch) -> (state, metrics)`.

    A step whose loss or gradient norm is not finite leaves params, optimiser state and
    EMA unchanged and increments `nonfinite` (consecutive) and `skipped` (total).
    """
    schedule = learning_rate_schedule(cfg)
    mask = trained_mask(params, cfg.train_params)
    accumulating = cfg.grad_accum > 1

    def step(state: TrainState, text_params, batch):
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, text_params, batch, key)
        grads = jax.tree.map(lambda g, m: g if m else jnp.zeros_like(g), grads, mask)
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        updates_done = state.step // cfg.grad_accum
        ema = ema_update(state.ema, params, ema_decay_at(updates_done, cfg.ema_decay))
        if accumulating:  # the EMA moves only when the accumulated update is applied
            ema = jax.tree.map(lambda n, o: jnp.where(opt_state.mini_step == 0, n, o),
                               ema, state.ema)

        def keep(new, old):
            return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)

        new_state = TrainState(
            step=state.step + 1, params=keep(params, state.params),
            opt_state=keep(opt_state, state.opt_state), ema=keep(ema, state.ema),
            rng=state.rng,
            nonfinite=jnp.where(finite, 0, state.nonfinite + 1).astype(jnp.int32),
            skipped=(state.skipped + jnp.where(finite, 0, 1)).astype(jnp.int32))
        metrics = {"loss": loss, "grad_norm": grad_norm, "lr": schedule(updates_done),
                   "finite": finite, "nonfinite": new_state.nonfinite,
                   "skipped": new_state.skipped, **aux}
        return new_state, metrics

    return step


def jit_train_step(step: Callable, mesh: Mesh, state: TrainState, text_params: Any,
                   donate: bool = True) -> StepFn:
    """`jax.jit` with explicit in/out shardings on `mesh` (see `state_shardings`)."""
    state_sh = state_shardings(mesh, state)
    text_sh = jax.tree.map(lambda _: replicated(mesh), text_params)
    return jax.jit(step, in_shardings=(state_sh, text_sh, batch_shardings(mesh)),
                   out_shardings=(state_sh, replicated(mesh)),
                   donate_argnums=(0,) if donate else ())


def place_state(state: TrainState, mesh: Mesh) -> TrainState:
    """`state` laid out on `mesh` with `state_shardings` (single process)."""
    return jax.device_put(state, state_shardings(mesh, state))


def place_batch(arrays: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Global batch arrays from this process's rows (its slice of the global batch)."""
    shardings = batch_shardings(mesh)
    return {name: jax.make_array_from_process_local_data(shardings[name], np.asarray(arrays[name]))
            for name in BATCH_KEYS}
