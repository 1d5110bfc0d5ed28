"""The optimiser: AdamW, warmup + cosine decay, global-norm clipping, gradient
accumulation, and a frozen base when only some parameters train (`param_labels`)."""

from __future__ import annotations

from typing import Any

import jax
import optax

from dreamlayer_jax.pipeline.components import is_dreamlayer_param
from dreamlayer_jax.training.config import TrainConfig

TRAIN, FROZEN = "train", "frozen"
KV_PROJECTIONS = ("to_k", "to_v", "to_k_fg", "to_v_fg")
KV_ROOTS = ("layer_assign", "context_layers")


def learning_rate_schedule(cfg: TrainConfig) -> optax.Schedule:
    """Linear warmup from 0 to `learning_rate`, then cosine decay to `end_lr_ratio` of it
    at `num_steps` (counted in optimiser updates, i.e. after gradient accumulation).

    With `cooldown_steps` N > 0 the rate holds at its peak after the warm-up and only
    the last N steps decay it (warmup-stable-decay): a constant-rate run extended with
    `--resume --set num_steps=M cooldown_steps=N` keeps its rate up to step `M - N`."""
    if cfg.cooldown_steps:
        total = max(cfg.num_steps // cfg.grad_accum, 1)
        cool = max(cfg.cooldown_steps // cfg.grad_accum, 1)
        stable_end = max(total - cool, cfg.warmup_steps)
        return optax.join_schedules(
            [optax.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps),
             optax.constant_schedule(cfg.learning_rate),
             optax.cosine_decay_schedule(cfg.learning_rate, cool, alpha=cfg.end_lr_ratio)],
            boundaries=[cfg.warmup_steps, stable_end])
    decay_steps = max(cfg.num_steps // cfg.grad_accum, cfg.warmup_steps + 1)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.learning_rate, warmup_steps=cfg.warmup_steps,
        decay_steps=decay_steps, end_value=cfg.learning_rate * cfg.end_lr_ratio)


def _key_name(entry: Any) -> Any:
    return getattr(entry, "key", getattr(entry, "idx", getattr(entry, "name", entry)))


def is_kv_param(path: tuple[Any, ...]) -> bool:
    """Custom-Diffusion style training (the paper variant, DESIGN.md section 8): the key
    and value projections of every attention (self and cross; their LoRA adapters too),
    the foreground K/V pairs, the layer assign embedding and the context-aware layers."""
    return str(path[0]) in KV_ROOTS or any(str(p) in KV_PROJECTIONS for p in path)


def param_labels(params: Any, train_params: str) -> Any:
    """`TRAIN` / `FROZEN` for each leaf of a params pytree (nnx pure dict).

    `train_params`: "all" every leaf; "dreamlayer" DreamLayer's own parameters
    (`components.is_dreamlayer_param`: role embedding, LoRA adapters, the paper parts);
    "kv" the K/V projections (`is_kv_param`), valid for both variants: in the box
    variant only the attentions' K/V train (its role embedding stays frozen, i.e. zero).
    Frozen leaves get no Adam moments and no EMA copy.
    """
    select = {"dreamlayer": is_dreamlayer_param, "kv": is_kv_param}.get(train_params)

    def label(path, _):
        if select is None:
            return TRAIN
        return TRAIN if select(tuple(_key_name(p) for p in path)) else FROZEN

    return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(cfg: TrainConfig, params: Any) -> optax.GradientTransformation:
    """clip -> AdamW on the trained leaves (zero updates on frozen ones), accumulated
    over `grad_accum` micro-batches with `optax.MultiSteps` when it is > 1."""
    adamw = optax.chain(
        optax.clip_by_global_norm(cfg.grad_clip) if cfg.grad_clip > 0 else optax.identity(),
        optax.adamw(learning_rate_schedule(cfg), b1=cfg.adam_b1, b2=cfg.adam_b2,
                    weight_decay=cfg.weight_decay),
    )
    tx = optax.multi_transform({TRAIN: adamw, FROZEN: optax.set_to_zero()},
                               param_labels(params, cfg.train_params))
    if cfg.grad_accum > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=cfg.grad_accum)
    return tx


def trained_mask(params: Any, train_params: str) -> Any:
    """Booleans per leaf: True where the leaf is trained."""
    return jax.tree.map(lambda lab: lab == TRAIN, param_labels(params, train_params))
