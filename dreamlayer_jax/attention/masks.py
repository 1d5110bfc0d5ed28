"""Region masks: the boxes of a scene rasterised at an attention resolution.

Pure functions of `boxes[B, L, 4]` (`(x0, y0, x1, y1)` in [0, 1]); a pixel belongs to a
box when its centre lies inside the box dilated by `margin` on every side.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

ROLE_BACKGROUND = 0
ROLE_FOREGROUND = 1
ROLE_GLOBAL = 2
NUM_ROLES = 3


def box_masks(boxes: jax.Array, h: int, w: int, margin: float = 0.0) -> jax.Array:
    """Rasterise `boxes[..., 4]` on an `h x w` grid: `bool[..., h * w]` (row-major pixels)."""
    ys = (jnp.arange(h, dtype=jnp.float32) + 0.5) / h
    xs = (jnp.arange(w, dtype=jnp.float32) + 0.5) / w
    x0, y0, x1, y1 = (boxes[..., i, None] for i in range(4))
    inside_y = (ys >= y0 - margin) & (ys <= y1 + margin)  # [..., h]
    inside_x = (xs >= x0 - margin) & (xs <= x1 + margin)  # [..., w]
    return (inside_y[..., :, None] & inside_x[..., None, :]).reshape(*boxes.shape[:-1], h * w)


def box_masks_soft(boxes: jax.Array, h: int, w: int, margin: float = 0.0) -> jax.Array:
    """Anti-aliased `box_masks`: the covered fraction of each pixel, `float32[..., h, w]`."""
    def cover(lo, hi, n):
        edges = jnp.arange(n + 1, dtype=jnp.float32) / n
        left, right = edges[:-1], edges[1:]
        return jnp.clip((jnp.minimum(right, hi) - jnp.maximum(left, lo)) * n, 0.0, 1.0)

    x0, y0, x1, y1 = (boxes[..., i, None] for i in range(4))
    cy = cover(y0 - margin, y1 + margin, h)  # [..., h]
    cx = cover(x0 - margin, x1 + margin, w)  # [..., w]
    return cy[..., :, None] * cx[..., None, :]


def foreground_regions(
    boxes: jax.Array, roles: jax.Array, layer_valid: jax.Array, h: int, w: int, margin: float
) -> jax.Array:
    """`bool[B, L, N]`: each valid foreground's dilated box; all False for other layers."""
    is_fg = (roles == ROLE_FOREGROUND) & layer_valid
    return box_masks(boxes, h, w, margin) & is_fg[..., None]


def background_region(fg_regions: jax.Array) -> jax.Array:
    """`bool[B, N]`: pixels outside every foreground region (the background's share)."""
    return ~jnp.any(fg_regions, axis=1)
