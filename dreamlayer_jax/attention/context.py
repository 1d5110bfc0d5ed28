"""`LayerContext`: what the UNet's attention needs to know about a batch of layered scenes.

Layout (DESIGN.md section 1): layers on axis 1 of `[B, L, ...]`; slot `0` is the
background, slots `1 .. L-2` foregrounds in paint order, slot `L-1` the global layer.
Scenes with fewer foregrounds are padded; `layer_valid` is False on padded slots.
The arrays are pytree leaves (shardable over `("data", "layer")`); the switches are
static, so each combination compiles once.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
from flax import struct

from dreamlayer_jax.attention.backends import attend
from dreamlayer_jax.attention.layer_attention import AttendFn, caca_attention, lssa_attention
from dreamlayer_jax.attention.masks import ROLE_BACKGROUND, ROLE_FOREGROUND, ROLE_GLOBAL


@struct.dataclass
class LayerContext:
    """Per-scene layer metadata and the CACA / LSSA switches.

    Attributes:
      layer_valid: `bool[B, L]`, False on padded slots.
      roles: `int32[B, L]`, ROLE_BACKGROUND / ROLE_FOREGROUND / ROLE_GLOBAL.
      boxes: `float32[B, L, 4]`, `(x0, y0, x1, y1)` in [0, 1]; whole canvas for the
        background and the global layer.
      text: `[B, L, T, D]` each layer's prompt embedding (slot `L-1`: the global prompt).
      added: SDXL's added conditioning of each layer, `text_embeds [B, L, P]` (pooled
        prompt) and `time_ids [B, L, 6]`; None for SD 1.x / 2.x.
      caca, lssa, lssa_scope, box_margin: static switches (DESIGN.md section 2).
      attention_backend: the concrete kernel of every attention call ("xla", "cudnn" or
        "splash"; `attention.backends.resolve_backend` turns "auto" into one).
    """

    layer_valid: jax.Array
    roles: jax.Array
    boxes: jax.Array
    text: jax.Array
    added: dict[str, jax.Array] | None = None
    caca: bool = struct.field(pytree_node=False, default=True)
    lssa: bool = struct.field(pytree_node=False, default=True)
    lssa_scope: Literal["global", "all"] = struct.field(pytree_node=False, default="global")
    box_margin: float = struct.field(pytree_node=False, default=0.05)
    attention_backend: str = struct.field(pytree_node=False, default="xla")

    @property
    def num_layers(self) -> int:
        return self.layer_valid.shape[1]

    @property
    def paint_order(self) -> jax.Array:
        """`int32[B, L]`: the rank at which each slot is painted (slot order; padded last)."""
        return jnp.broadcast_to(jnp.arange(self.num_layers), self.layer_valid.shape)

    def replace_switches(self, **switches) -> LayerContext:
        """A copy with other switch values (caca, lssa, lssa_scope, box_margin)."""
        return self.replace(**switches)

    def attention_fns(self, h: int, w: int) -> tuple[AttendFn, AttendFn]:
        """The (self, cross) attention functions for a block at spatial size `h x w`.

        A mechanism switched off is plain per-layer attention on the same backend.
        """
        backend = self.attention_backend

        def self_fn(q, k, v):
            if self.lssa:
                return lssa_attention(q, k, v, self, h, w)
            return attend(q, k, v, backend=backend)

        def cross_fn(q, k, v):
            if self.caca:
                return caca_attention(q, k, v, self, h, w)
            return attend(q, k, v, backend=backend)

        return self_fn, cross_fn


def make_roles(layer_valid: jax.Array) -> jax.Array:
    """`int32[B, L]` roles for the fixed slot layout: background, foregrounds, global."""
    num_layers = layer_valid.shape[-1]
    roles = jnp.full(layer_valid.shape, ROLE_FOREGROUND, jnp.int32)
    roles = roles.at[..., 0].set(ROLE_BACKGROUND)
    return roles.at[..., num_layers - 1].set(ROLE_GLOBAL)
