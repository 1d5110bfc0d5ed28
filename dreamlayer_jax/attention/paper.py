"""The paper variant's attention (DESIGN.md section 8): no boxes, learned context maps.

- **Context maps.** In the cross-attentions at the context blocks (default: the deepest
  down block with cross-attention, the 16x16 level of SD 1.5 at 512 px) every layer
  attends to its own text as in plain SD, and the probabilities are kept: the global
  layer's, summed over each foreground's token span in the concatenated global prompt,
  give the initial context maps `M_G^f`; each foreground's own, summed over its own
  prompt's tokens, give `M_F^f` (what `L_layout` compares). Both come out of the one
  softmax the block computes anyway (`cross_attention_with_maps`).
- **LSSA.** In the up blocks each layer's queries read the keys/values of every valid
  layer of its scene (`parallel.layer_attention`: one device, or the layer axis
  sharded over the mesh with an all-gather of K/V or a ring).
- **Early blend.** While `t >= T_G` each foreground's hidden states entering an up
  block's transformer are pulled to the global layer's by its context map:
  `z_f <- z_g * M_G^f + z_f * (1 - M_G^f)` (`context_blend`).

Shapes: `q[B*L, N, H, d]`, `k, v[B*L, T, H, d]` with layers folded into the batch as the
UNet runs them; maps `[B, L, h, w]` (zero on the background, global and padded slots).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from dreamlayer_jax.parallel.layer_attention import (
    joint_layer_attention,
    sharded_joint_layer_attention,
)

MapRecord = dict[str, jax.Array]
"""What one context block records (`Attention` sows it as an `nnx.Intermediate`):

- `global_maps [B, L, h, w]`: the global layer's probability mass on each slot's tokens;
- `own_maps [B, L, h, w]`: each layer's mass on its own prompt's tokens;
- `global_query [B, h, w, C]`: the global layer's queries (its hidden states as the
  block's attention reads them), which the context-aware layers refine the maps with.
"""


def min_max_normalise(maps: jax.Array, eps: float = 1e-6) -> jax.Array:
    """Each map `[..., h, w]` rescaled to [0, 1]; a constant map becomes zeros."""
    lo = maps.min(axis=(-2, -1), keepdims=True)
    hi = maps.max(axis=(-2, -1), keepdims=True)
    span = hi - lo
    return jnp.where(span > eps, (maps - lo) / jnp.where(span > eps, span, 1.0), 0.0)


def resize_maps(maps: jax.Array, h: int, w: int) -> jax.Array:
    """Bilinear resize of `maps[..., hm, wm]` to `[..., h, w]` (identity at equal size)."""
    if maps.shape[-2:] == (h, w):
        return maps
    return jax.image.resize(maps, (*maps.shape[:-2], h, w), "bilinear", antialias=True)


def cross_attention_with_maps(
    q: jax.Array, k: jax.Array, v: jax.Array, *, num_layers: int, token_owner: jax.Array,
    own_tokens: jax.Array, h: int, w: int,
) -> tuple[jax.Array, MapRecord]:
    """Plain per-layer cross-attention that also returns the context-map record.

    Args:
      q: `[B*L, N, H, d]` queries (`N = h * w`); k, v: `[B*L, T, H, d]` each layer's text.
      token_owner: `int32[B, T]` the slot whose prompt each token of the global layer's
        (concatenated) prompt came from; -1 for [SOS], [EOS] and padding.
      own_tokens: `bool[B, L, T]` the tokens of each layer's own prompt (no specials).
    Returns:
      `(out [B*L, N, H, d], record)`: the attention output and a `MapRecord`. The
      probabilities are those the output is computed from (one softmax, averaged over
      heads for the maps), in float32.
    """
    scale = q.shape[-1] ** -0.5
    qh, kh, vh = (jnp.swapaxes(a, 1, 2) for a in (q, k, v))  # heads first, as xla_attention
    scores = jnp.einsum("nhqd,nhkd->nhqk", qh, kh, preferred_element_type=jnp.float32) * scale
    e = jnp.exp(scores - jax.lax.stop_gradient(scores.max(axis=-1, keepdims=True)))
    total = e.sum(axis=-1, keepdims=True)  # [B*L, H, N, 1]
    out = jnp.einsum("nhqk,nhkd->nhqd", e.astype(v.dtype), vh) / total.astype(v.dtype)
    out = jnp.swapaxes(out, 1, 2)
    probs = e / total  # [B*L, H, N, T]: the probabilities `out` was weighted by
    per_pixel = probs.mean(axis=1)  # [B*L, N, T]
    batch = q.shape[0] // num_layers
    per_pixel = per_pixel.reshape(batch, num_layers, h * w, per_pixel.shape[-1])
    owners = jax.nn.one_hot(token_owner, num_layers, dtype=jnp.float32)  # [B, T, L]; -1 -> 0
    global_maps = jnp.einsum("bnt,btl->bln", per_pixel[:, -1], owners)
    own_maps = jnp.einsum("blnt,blt->bln", per_pixel, own_tokens.astype(jnp.float32))
    query = q.reshape(batch, num_layers, h, w, -1)[:, -1]
    record = {"global_maps": global_maps.reshape(batch, num_layers, h, w),
              "own_maps": own_maps.reshape(batch, num_layers, h, w),
              "global_query": query.astype(jnp.float32)}
    return out, record


def all_layer_lssa(
    q: jax.Array, k: jax.Array, v: jax.Array, layer_mask: jax.Array, *, backend: str,
    mesh: Mesh | None = None, method: str = "auto",
) -> jax.Array:
    """The paper's LSSA: every layer's queries against the joint K/V of its scene's layers.

    Args:
      q, k, v: `[B*L, N, H, d]` self-attention projections, layers folded into the batch.
      layer_mask: `bool[B, L, L]` which key layers each query layer reads (valid layers;
        decomposition's eq. 15 restricts the global layer to its own block).
      mesh: with a "layer" axis of size > 1, the attention runs partitioned over it
        (`method` "auto", "allgather" or "ring", `parallel.layer_attention`); else on one
        device.
    Returns:
      `[B*L, N, H, d]`.
    """
    batch, num_layers = layer_mask.shape[:2]

    def unfold(x):
        return x.reshape(batch, num_layers, *x.shape[1:])

    if mesh is not None and mesh.shape.get("layer", 1) > 1:
        out = sharded_joint_layer_attention(unfold(q), unfold(k), unfold(v), layer_mask, mesh,
                                            method=method)
    else:
        out = joint_layer_attention(unfold(q), unfold(k), unfold(v), layer_mask,
                                    backend=backend)
    return out.reshape(q.shape)


def context_blend(x: jax.Array, maps: jax.Array, active: jax.Array) -> jax.Array:
    """The early blend: foreground hidden states pulled to the global layer's by their map.

    Args:
      x: `[B*L, h, w, C]` hidden states (slot `L-1` the global layer).
      maps: `[B, L, hm, wm]` context maps in [0, 1], zero on non-foreground slots (so
        those rows are unchanged); resized to `h x w` here.
      active: `bool[B]`, True while the scene's timestep is `>= T_G`.
    Returns:
      `x` with `z_f <- z_g * M + z_f * (1 - M)` on the active scenes' foregrounds.
    """
    batch, num_layers = maps.shape[:2]
    h, w = x.shape[1:3]
    x5 = x.reshape(batch, num_layers, *x.shape[1:])
    m = resize_maps(maps, h, w)[..., None] * active[:, None, None, None, None]
    m = m.astype(x.dtype)
    blended = x5[:, -1:] * m + x5 * (1 - m)
    return blended.reshape(x.shape)
