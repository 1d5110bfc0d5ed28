"""The box variant's CACA and LSSA (DESIGN.md section 2) as masked attention.

Every function takes the projections of one attention block with layers folded into
the batch, `q[B*L, N, H, d]` and `k, v[B*L, S, H, d]`, and returns `[B*L, N, H, d]`.
No `[L*N, L*N]` score matrix exists anywhere: LSSA with scope "global" gives each layer
`2N` keys (its own and the global layer's), so its cost is linear in `L`.

On the "xla" backend the calls are `attention.softmax`'s multi-block forms: the global
layer's keys are shared by all layers inside the contraction (never broadcast and
concatenated per layer) and CACA's region mask is one bit per (pixel, layer), not
repeated over the prompt's tokens. The fused kernels ("cudnn", "splash") take one
key/value tensor and one mask, so for them the keys are concatenated as before.
"""

from __future__ import annotations

from typing import Literal, Protocol

import jax
import jax.numpy as jnp

from dreamlayer_jax.attention.backends import attend
from dreamlayer_jax.attention.masks import (
    ROLE_BACKGROUND,
    ROLE_FOREGROUND,
    background_region,
    foreground_regions,
)
from dreamlayer_jax.attention.softmax import (
    grouped_kv_attention,
    shared_kv_attention,
    xla_attention,
)

__all__ = ["BoxLayout", "caca_attention", "lssa_attention"]


class BoxLayout(Protocol):
    """What the box mechanisms read of a batch of scenes (`LayerContext` is one).

    `layer_valid bool[B, L]`, `roles int32[B, L]`, `boxes float32[B, L, 4]`; the rest static.
    """

    layer_valid: jax.Array
    roles: jax.Array
    boxes: jax.Array
    box_margin: float
    attention_backend: str
    lssa_scope: Literal["global", "all"]

    @property
    def num_layers(self) -> int: ...


def _unfold(x: jax.Array, num_layers: int) -> jax.Array:
    """`[B*L, ...] -> [B, L, ...]`."""
    return x.reshape(x.shape[0] // num_layers, num_layers, *x.shape[1:])


def _fold(x: jax.Array) -> jax.Array:
    """`[B, L, ...] -> [B*L, ...]`."""
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def _global_visibility(ctx: BoxLayout, h: int, w: int) -> jax.Array:
    """`bool[B, L, N]`: which of the global layer's tokens each layer's queries may read.

    A foreground reads the global tokens inside its region, the background those
    outside every foreground region, the global layer none (they are its own keys).
    """
    fg = foreground_regions(ctx.boxes, ctx.roles, ctx.layer_valid, h, w, ctx.box_margin)
    bg = background_region(fg)  # [B, N]
    is_bg = (ctx.roles == ROLE_BACKGROUND) & ctx.layer_valid
    return fg | (is_bg[..., None] & bg[:, None, :])


def lssa_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, ctx: BoxLayout, h: int, w: int
) -> jax.Array:
    """Layer-Shared Self-Attention: `softmax(Q_l [K_l; K_g]^T / sqrt(d)) [V_l; V_g]`.

    With `ctx.lssa_scope == "all"` every layer also reads every other valid layer
    (keys `[B, L, L*N]`: quadratic in L, kept for ablations).
    """
    num_layers = ctx.num_layers
    k5, v5 = _unfold(k, num_layers), _unfold(v, num_layers)  # [B, L, N, H, d]
    batch, _, n = k5.shape[:3]
    see_global = _global_visibility(ctx, h, w)  # [B, L, N]
    if ctx.lssa_scope == "global" and ctx.attention_backend == "xla":
        # Own keys and the global layer's as two blocks of one softmax: the global
        # layer's keys are read by every layer's queries, never copied per layer. The
        # global layer itself sees none of them (its own keys only): plain attention.
        q5 = _unfold(q, num_layers)
        out = shared_kv_attention(q5[:, :-1], k5[:, :-1], v5[:, :-1], k5[:, -1], v5[:, -1],
                                  see_global[:, :-1])
        out_global = xla_attention(q5[:, -1], k5[:, -1], v5[:, -1])
        return _fold(jnp.concatenate([out, out_global[:, None]], axis=1))
    if ctx.lssa_scope == "global":
        k_g = jnp.broadcast_to(k5[:, -1:], k5.shape)
        v_g = jnp.broadcast_to(v5[:, -1:], v5.shape)
        keys = _fold(jnp.concatenate([k5, k_g], axis=2))  # [B*L, 2N, H, d]
        values = _fold(jnp.concatenate([v5, v_g], axis=2))
        own = jnp.ones((batch, num_layers, n), bool)
        mask = jnp.concatenate([own, see_global], axis=2)  # [B, L, 2N]
    elif ctx.lssa_scope == "all":
        flat_k = k5.reshape(batch, 1, num_layers * n, *k5.shape[3:])
        flat_v = v5.reshape(batch, 1, num_layers * n, *v5.shape[3:])
        keys = _fold(jnp.broadcast_to(flat_k, (batch, num_layers, *flat_k.shape[2:])))
        values = _fold(jnp.broadcast_to(flat_v, (batch, num_layers, *flat_v.shape[2:])))
        eye = jnp.eye(num_layers, dtype=bool)[None]  # [1, Lq, Lk]
        others = ctx.layer_valid[:, None, :] & ~eye
        others = others.at[:, :, -1].set(False)  # the global layer only through its region
        per_layer = (eye | others)[..., None]  # [B, Lq, Lk, 1]
        per_layer = jnp.broadcast_to(per_layer, (batch, num_layers, num_layers, n))
        per_layer = per_layer.at[:, :, -1, :].set(per_layer[:, :, -1, :] | see_global)
        mask = per_layer.reshape(batch, num_layers, num_layers * n)
    else:
        raise ValueError(f"unknown lssa_scope {ctx.lssa_scope!r}")
    # [B*L, S]: the mask depends on the key only (splash: segment ids)
    return attend(q, keys, values, key_mask=_fold(mask), backend=ctx.attention_backend)


def caca_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, ctx: BoxLayout, h: int, w: int
) -> jax.Array:
    """Context-Aware Cross-Attention.

    `k, v[B*L, T, H, d]` are each layer's own text tokens. Background and foregrounds
    read `[T_l ; T_G]`. The global layer reads `[T_G ; T_0 ; T_1 .. T_{K-1}]`: `T_G`
    everywhere, `T_l` inside foreground `l`'s region, `T_0` outside every region.
    """
    num_layers = ctx.num_layers
    q5 = _unfold(q, num_layers)  # [B, L, N, H, d]
    k5, v5 = _unfold(k, num_layers), _unfold(v, num_layers)  # [B, L, T, H, d]
    batch, _, t = k5.shape[:3]

    # Background and foregrounds: own prompt and the global prompt, no mask needed.
    fused = ctx.attention_backend in ("xla", "splash")  # splash: this mask runs on XLA
    if ctx.attention_backend == "xla":
        out_local = shared_kv_attention(q5[:, :-1], k5[:, :-1], v5[:, :-1], k5[:, -1],
                                        v5[:, -1])
    else:
        k_loc = jnp.concatenate([k5[:, :-1], jnp.broadcast_to(k5[:, -1:], k5[:, :-1].shape)], 2)
        v_loc = jnp.concatenate([v5[:, :-1], jnp.broadcast_to(v5[:, -1:], v5[:, :-1].shape)], 2)
        out_local = _unfold(attend(_fold(q5[:, :-1]), _fold(k_loc), _fold(v_loc),
                                   backend=ctx.attention_backend), num_layers - 1)

    # Global layer: every layer's tokens, gated per pixel by the region masks.
    fg = foreground_regions(ctx.boxes, ctx.roles, ctx.layer_valid, h, w, ctx.box_margin)
    bg = background_region(fg)  # [B, N]
    is_bg = (ctx.roles == ROLE_BACKGROUND) & ctx.layer_valid
    is_fg = (ctx.roles == ROLE_FOREGROUND) & ctx.layer_valid
    per_layer = jnp.where(is_fg[..., None], fg, is_bg[..., None] & bg[:, None, :])  # [B, L, N]
    per_layer = jnp.swapaxes(per_layer.at[:, -1].set(True), 1, 2)  # [B, N, L]; T_G everywhere
    if fused:  # one mask bit per (pixel, layer), shared by that layer's T tokens
        out_global = grouped_kv_attention(q5[:, -1], k5, v5, per_layer)
    else:
        mask = jnp.repeat(per_layer, t, axis=2)  # [B, N, L*T]
        k_all = k5.reshape(batch, num_layers * t, *k5.shape[3:])
        v_all = v5.reshape(batch, num_layers * t, *v5.shape[3:])
        out_global = attend(q5[:, -1], k_all, v_all, mask=mask[:, None],
                            backend=ctx.attention_backend)

    return _fold(jnp.concatenate([out_local, out_global[:, None]], axis=1))
