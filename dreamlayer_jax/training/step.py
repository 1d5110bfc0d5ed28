"""The jitted, sharded train step of the denoising objective.

Frozen text encoders inside the step: the prompts' token ids `[B, L, T]` (SDXL: also
`token_ids_2` for its second tokenizer) are encoded under `stop_gradient` (the encoders'
parameters are an argument, replicated, never updated; SDXL's pooled text and size
`time_ids` become the layers' added conditioning), and the codec encodes the RGBA pixels
to latents in the step too (PixelCodec: a few elementwise ops). So a batch travels as
pixels + token ids, and the step is one XLA program: encode, noise, predict, loss,
gradient, AdamW, EMA, skip-if-non-finite.

The paper variant (DESIGN.md section 8; `make_loss_fn(paper_special_ids=...)`): the
global slot's token ids are rebuilt as the concatenation of the layers' prompts before
encoding (`paper_layer_tokens`), boxes are the full canvas (no box is an input), and
with CACA the context-map losses join the denoising loss:
`L = L_noise + w_c L_c + w_layout L_layout` (`losses.context_loss`, `layout_loss`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from dreamlayer_jax.attention.context import LayerContext, make_roles
from dreamlayer_jax.attention.masks import ROLE_FOREGROUND
from dreamlayer_jax.data.batch import FULL_BOX
from dreamlayer_jax.errors import ConfigError
from dreamlayer_jax.parallel.rules import layout, logical_sharding, param_shardings, replicated
from dreamlayer_jax.pipeline.paper_prompts import LayerTokens, concat_layer_tokens, prompt_lengths
from dreamlayer_jax.pipeline.text_conditioning import (
    encode_tokens,
    sdxl_time_ids,
    zero_where_empty,
)
from dreamlayer_jax.schedulers.forward_process import add_noise, get_target
from dreamlayer_jax.training.config import TrainConfig
from dreamlayer_jax.training.losses import (
    context_loss,
    edge_weights,
    layout_loss,
    masked_layer_loss,
    min_snr_weights,
    role_weights,
    sample_timesteps,
)
from dreamlayer_jax.training.optimizer import learning_rate_schedule, trained_mask
from dreamlayer_jax.training.state import TrainState, ema_decay_at, ema_update

BATCH_KEYS = {"pixels": 5, "layer_valid": 2, "boxes": 3, "token_ids": 3}  # name -> ndim
SDXL_BATCH_KEYS = {**BATCH_KEYS, "token_ids_2": 3}  # the second tokenizer's ids
# a cached batch (`make_loss_fn(cached=True)`); SDXL adds text_embeds and time_ids, the
# paper variant token_ids (its global slot's token owners) and, with CACA, alphas
CACHED_BATCH_KEYS = {"latents": 5, "layer_valid": 2, "boxes": 3, "text": 4}

# the trained tree of `train_text_encoder` (`joint_params`)
UNET, TEXT_ENCODERS = "unet", "text_encoders"

StepFn = Callable[[TrainState, Any, dict[str, jax.Array]], tuple[TrainState, dict[str, Any]]]


def state_shardings(mesh: Mesh, state: TrainState) -> TrainState:
    """Every leaf sharded over `"fsdp"` along its largest divisible axis (params, Adam
    moments and EMA alike, so they line up); small leaves replicated."""
    return param_shardings(mesh, state)


def batch_keys(num_text_encoders: int) -> dict[str, int]:
    """The batch's arrays (name -> ndim) for a model with 1 or 2 (SDXL) text encoders."""
    return SDXL_BATCH_KEYS if num_text_encoders == 2 else BATCH_KEYS


def batch_shardings(mesh: Mesh, num_text_encoders: int = 1,
                    keys: dict[str, int] | None = None) -> dict[str, NamedSharding]:
    """`[B, L, ...]` batch arrays: B over ("data", "fsdp"), L over "layer"
    (`parallel.rules.LAYOUTS`); `keys` (name -> ndim) default `batch_keys(...)`."""
    keys = batch_keys(num_text_encoders) if keys is None else keys
    return {name: logical_sharding(mesh, layout(name, ndim)) for name, ndim in keys.items()}


def _cast(tree: Any, dtype: jnp.dtype) -> Any:
    return jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def paper_layer_tokens(ids: jax.Array, layer_valid: jax.Array, *, eos_id: int,
                       pad_id: int) -> LayerTokens:
    """The paper variant's token ids of a batch, `ids[B, L, T]`: the global slot rebuilt
    from the valid layers' prompts (`paper_prompts.concat_layer_tokens`; a dropped layer
    prompt is empty, so it drops out of the concatenation too).

    A scene whose global prompt was dropped (empty: classifier-free guidance's
    unconditional branch) keeps it empty, with no token owners (`lengths` 2), so the
    global slot still learns the unconditional prediction.
    """
    tokens = concat_layer_tokens(ids, layer_valid, eos_id=eos_id, pad_id=pad_id)
    dropped = prompt_lengths(ids[:, -1], eos_id) == 0  # [B]
    own = tokens.own_tokens.at[:, -1].set(tokens.own_tokens[:, -1] & ~dropped[:, None])
    return LayerTokens(ids=jnp.where(dropped[:, None, None], ids, tokens.ids),
                       token_owner=jnp.where(dropped[:, None], -1, tokens.token_owner),
                       own_tokens=own, lengths=jnp.where(dropped, 2, tokens.lengths))


def layer_token_ids(batch: dict[str, jax.Array], num_text_encoders: int,
                    paper_special_ids: Sequence[tuple[int, int]] | None = None
                    ) -> tuple[list[jax.Array], LayerTokens | None]:
    """Each tokenizer's ids `[B, L, T]` of a batch (the paper variant's global slot
    rebuilt, `paper_layer_tokens`) and the first tokenizer's `LayerTokens` (None in the
    box variant, `paper_special_ids=None`)."""
    ids = [batch["token_ids"], *([batch["token_ids_2"]] if num_text_encoders == 2 else [])]
    if paper_special_ids is None:
        return ids, None
    tokens = [paper_layer_tokens(i, batch["layer_valid"], eos_id=eos, pad_id=pad)
              for i, (eos, pad) in zip(ids, paper_special_ids, strict=True)]
    return [t.ids for t in tokens], tokens[0]


def encode_layer_text(text_graphs: Sequence[nnx.GraphDef], text_params: Sequence[Any],
                      ids: Sequence[jax.Array], size: tuple[int, int],
                      empty_prompt_ids: np.ndarray | None = None, *, trainable: bool = False
                      ) -> tuple[jax.Array, dict[str, jax.Array] | None]:
    """`(text [B, L, T, D], added | None)` of each tokenizer's ids `[B, L, T]`, under
    `stop_gradient` unless `trainable`; SDXL's `added` holds `text_embeds [B, L, P]` and
    `time_ids [B, L, 6]` for pictures of `size` (h, w). With `empty_prompt_ids` empty
    prompts encode to zeros (`make_loss_fn`). The train step and `data.latent_cache` both
    encode through here."""
    b, num_layers = ids[0].shape[:2]
    flat = [i.reshape(b * num_layers, i.shape[-1]) for i in ids]
    hidden, pooled = encode_tokens(text_graphs, text_params, flat)
    if empty_prompt_ids is not None:
        empty = jnp.all(flat[0] == jnp.asarray(empty_prompt_ids), axis=-1)
        hidden, pooled = zero_where_empty(~empty, hidden, pooled)
    added = None
    if pooled is not None:
        added = {"text_embeds": pooled, "time_ids": sdxl_time_ids(b * num_layers, size)}
    out = jax.tree.map(lambda a: a.reshape(b, num_layers, *a.shape[1:]), (hidden, added))
    return out if trainable else jax.lax.stop_gradient(out)


def encode_layers(codec: Any, pixels: jax.Array) -> jax.Array:
    """Latents `[B, L, h, w, c]` of straight RGBA `pixels [B, L, H, W, 4]` (the codec's
    deterministic encoding, under `stop_gradient`)."""
    b, num_layers = pixels.shape[:2]
    x0 = codec.encode(pixels.reshape(b * num_layers, *pixels.shape[2:]))
    return jax.lax.stop_gradient(x0.reshape(b, num_layers, *x0.shape[1:]))


def map_loss_mask(tokens: LayerTokens, roles: jax.Array, layer_valid: jax.Array) -> jax.Array:
    """`bool[B, L]`: the foregrounds `L_c` and `L_layout` count: valid, with tokens of
    their own prompt and some of them in the global prompt (a dropped or fully cut
    prompt gives no map to learn from)."""
    slots = jnp.arange(layer_valid.shape[1])
    in_global = (tokens.token_owner[:, None, :] == slots[None, :, None]).any(axis=-1)
    return ((roles == ROLE_FOREGROUND) & layer_valid & in_global
            & tokens.own_tokens.any(axis=-1))


def joint_params(unet_params: Any, text_params: Sequence[Any]) -> dict[str, Any]:
    """The trained parameters when the text encoders train with the UNet."""
    return {UNET: unet_params, TEXT_ENCODERS: list(text_params)}


def make_loss_fn(cfg: TrainConfig, unet_graph: nnx.GraphDef,
                 text_graphs: tuple[nnx.GraphDef, ...], codec: Any, sched: Any,
                 box_margin: float, attention_backend: str = "xla",
                 empty_prompt_ids: np.ndarray | None = None,
                 paper_special_ids: Sequence[tuple[int, int]] | None = None, *,
                 mesh: Mesh | None = None, cached: bool = False,
                 train_text: bool = False) -> Callable:
    """`loss(params, text_params, batch, key) -> (loss, aux)` for one micro-batch.

    `text_params` is the list of the encoders' parameters (one, or SDXL's two), frozen;
    with `train_text` they are trained instead: `params` is `{"unet": ..., "text_encoders":
    [...]}` (`joint_params`), the gradient reaches the encoders and `text_params` is unused;
    `attention_backend` a concrete kernel (`attention.backends.resolve_backend`);
    `empty_prompt_ids` (`int32[T]`, the first tokenizer's ids of "") turns on SDXL's
    `force_zeros_for_empty_prompt`: empty prompts (dropped for classifier-free guidance,
    padded slots) encode to zeros, as the unconditional branch does in sampling.
    `paper_special_ids` (the `(eos_id, pad_id)` of each tokenizer) trains the paper
    variant (module docstring); the token owners come from the first tokenizer's ids
    (SDXL's two CLIP tokenizers split prompts alike). With a `mesh` whose "layer" axis
    is larger than 1, the paper variant's LSSA runs partitioned over it. `cached=True`
    reads a cached batch (`CACHED_BATCH_KEYS`: latents and text encoded once by
    `data.latent_cache`), and neither the codec nor the text encoders run.

    `aux`: `t_mean`, `loss_noise`; paper variant: `prompt_overflow` (scenes whose
    concatenated prompt was cut) and, with CACA, `loss_context`, `loss_layout`.
    """
    prediction_type = cfg.prediction_type or sched.config.prediction_type
    num_train_timesteps = int(sched.config.num_train_timesteps)
    t_low, t_high = cfg.timestep_range if cfg.timestep_range[1] else (0, num_train_timesteps)
    _, f_high, f_prob = cfg.timestep_focus
    for name, high in (("timestep_range", t_high), ("timestep_focus", f_high if f_prob else 0)):
        if high > num_train_timesteps:
            raise ConfigError(f"train config: {name}={getattr(cfg, name)!r} reaches past the "
                              f"scheduler's {num_train_timesteps} timesteps")
    compute_dtype = jnp.bfloat16 if cfg.compute_dtype == "bfloat16" else jnp.float32
    paper = paper_special_ids is not None
    layer_mesh = mesh if mesh is not None and mesh.shape["layer"] > 1 else None
    if paper and len(paper_special_ids) != len(text_graphs):
        raise ValueError(f"{len(paper_special_ids)} (eos, pad) pairs for "
                         f"{len(text_graphs)} text encoders")

    def conditioning(text_params, batch):
        """`(x0, text, added, tokens, alphas, token_count)` of a raw batch (encoded here)
        or of a cached one (read as is; `data.latent_cache`)."""
        if cached:
            added = ({"text_embeds": batch["text_embeds"], "time_ids": batch["time_ids"]}
                     if "text_embeds" in batch else None)
            tokens, count = None, None
            if paper:
                eos, pad = paper_special_ids[0]
                tokens = paper_layer_tokens(batch["token_ids"], batch["layer_valid"],
                                            eos_id=eos, pad_id=pad)
                count = batch["token_ids"].shape[-1]
            return (batch["latents"], batch["text"], added, tokens, batch.get("alphas"),
                    count)
        pixels = batch["pixels"]
        ids, tokens = layer_token_ids(batch, len(text_graphs), paper_special_ids)
        text, added = encode_layer_text(text_graphs, text_params, ids, pixels.shape[2:4],
                                        empty_prompt_ids, trainable=train_text)
        return (encode_layers(codec, pixels), text, added, tokens, pixels[..., 3],
                ids[0].shape[-1])

    def loss_fn(params, text_params, batch, key):
        if train_text:
            params, text_params = params[UNET], params[TEXT_ENCODERS]
        layer_valid = batch["layer_valid"]
        b, num_layers = layer_valid.shape
        x0, text, added, tokens, alphas, token_count = conditioning(text_params, batch)
        key_t, key_noise = jax.random.split(key)
        t = sample_timesteps(key_t, b, (t_low, t_high), cfg.timestep_focus)  # one per scene
        noise = jax.random.normal(key_noise, x0.shape, jnp.float32)
        x_t = add_noise(sched, x0, noise, t)
        target = get_target(sched, x0, noise, t, prediction_type)
        roles = make_roles(layer_valid)
        boxes = batch["boxes"]
        if paper:  # no box is an input anywhere
            boxes = jnp.broadcast_to(jnp.asarray(FULL_BOX, boxes.dtype), boxes.shape)
        ctx = LayerContext(
            layer_valid=layer_valid, roles=roles, boxes=boxes,
            text=text.astype(compute_dtype), added=_cast(added, compute_dtype),
            token_owner=None if tokens is None else tokens.token_owner,
            own_tokens=None if tokens is None else tokens.own_tokens,
            caca=cfg.caca, lssa=cfg.lssa, box_margin=box_margin,
            attention_backend=attention_backend, mesh=layer_mesh)
        model = nnx.merge(unet_graph, _cast(params, compute_dtype))
        with_maps = paper and cfg.caca
        out = model(x_t.astype(compute_dtype), jnp.broadcast_to(t[:, None], (b, num_layers)),
                    ctx, return_aux=with_maps)
        pred, maps = out if with_maps else (out, None)
        weights = role_weights(roles, cfg.role_loss_weights)
        weights = weights * min_snr_weights(sched, t, cfg.min_snr_gamma, prediction_type)[:, None]
        pixel_weights = None
        if cfg.edge_loss_weight > 0:
            if alphas is None:
                raise ConfigError("train config: edge_loss_weight needs the layers' alphas, "
                                  "which this latent cache lacks; rebuild it with "
                                  "edge_loss_weight > 0 in its config")
            pixel_weights = edge_weights(alphas, roles == ROLE_FOREGROUND, *x0.shape[2:4],
                                         cfg.edge_loss_weight)
        loss = masked_layer_loss(pred, target, layer_valid, weights, pixel_weights)
        aux = {"t_mean": t.astype(jnp.float32).mean(), "loss_noise": loss}
        if tokens is not None:
            aux["prompt_overflow"] = jnp.sum(tokens.lengths > token_count)
        if maps is not None:
            mask = map_loss_mask(tokens, roles, layer_valid)
            aux["loss_context"] = context_loss(maps["context_maps"], alphas, mask)
            aux["loss_layout"] = layout_loss(maps["context_maps"], maps["own_maps"], mask)
            loss = (loss + cfg.context_loss_weight * aux["loss_context"]
                    + cfg.layout_loss_weight * aux["loss_layout"])
        return loss, aux

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


def jit_train_step(step: Callable, mesh: Mesh, state: TrainState, text_params: list[Any],
                   donate: bool = True, batch_keys: dict[str, int] | None = None) -> StepFn:
    """`jax.jit` with explicit in/out shardings on `mesh` (see `state_shardings`);
    `text_params` is the list of the text encoders' parameters (replicated; `[]` for a
    cached batch, whose arrays `batch_keys` names)."""
    state_sh = state_shardings(mesh, state)
    text_sh = jax.tree.map(lambda _: replicated(mesh), text_params)
    batch_sh = batch_shardings(mesh, len(text_params), batch_keys)
    return jax.jit(step, in_shardings=(state_sh, text_sh, batch_sh),
                   out_shardings=(state_sh, replicated(mesh)),
                   donate_argnums=(0,) if donate else ())


def place_state(state: TrainState, mesh: Mesh) -> TrainState:
    """`state` laid out on `mesh` with `state_shardings` (single process)."""
    return jax.device_put(state, state_shardings(mesh, state))


def host_arrays(conditioner: Any, batch: dict[str, Any]) -> dict[str, np.ndarray]:
    """A `TrainBatch` as the step's arrays, prompts tokenized to `token_ids [B, L, T]`
    (and `token_ids_2` with SDXL's second tokenizer)."""
    b, num_layers = np.shape(batch["layer_valid"])
    flat = [p for scene in batch["prompts"] for p in scene]
    ids = [i.reshape(b, num_layers, -1) for i in conditioner.tokenize(flat)]
    arrays = {"pixels": np.asarray(batch["pixels"], np.float32),
              "layer_valid": np.asarray(batch["layer_valid"], bool),
              "boxes": np.asarray(batch["boxes"], np.float32), "token_ids": ids[0]}
    if len(ids) == 2:
        arrays["token_ids_2"] = ids[1]
    return arrays


def place_batch(arrays: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Global batch arrays from this process's rows (its slice of the global batch), each
    laid out by its name (`parallel.rules.LAYOUTS`): a raw batch or a cached one."""
    shardings = batch_shardings(mesh, keys={k: np.ndim(v) for k, v in arrays.items()})
    return {name: jax.make_array_from_process_local_data(sharding, np.asarray(arrays[name]))
            for name, sharding in shardings.items()}
