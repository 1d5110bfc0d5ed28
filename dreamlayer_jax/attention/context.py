"""`LayerContext`: what the UNet's attention needs to know about a batch of layered scenes.

Layout (DESIGN.md section 1): layers on axis 1 of `[B, L, ...]`; slot `0` is the
background, slots `1 .. L-2` foregrounds in paint order, slot `L-1` the global layer.
Scenes with fewer foregrounds are padded; `layer_valid` is False on padded slots.
The arrays are pytree leaves (shardable over `("data", "layer")`); the switches and the
variant are static, so each combination compiles once.

Two variants share this context and the UNet (DESIGN.md sections 2 and 8):
- "box": CACA and LSSA masked by the foregrounds' boxes (`attention.box`);
- "paper": no box needed; context maps read off the global layer's cross-attention at
  the context blocks, all-layer LSSA in the up blocks with the early context-map blend
  (`attention.paper`). `DreamLayerUNet` fills `timesteps` and, between the down and the
  up path, `context_maps` (and sets `phase="up"`).
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
from flax import struct
from jax.sharding import Mesh

from dreamlayer_jax.attention import paper
from dreamlayer_jax.attention.backends import attend
from dreamlayer_jax.attention.box import caca_attention, lssa_attention
from dreamlayer_jax.attention.masks import ROLE_BACKGROUND, ROLE_FOREGROUND, ROLE_GLOBAL
from dreamlayer_jax.models.attention import AttendFn
from dreamlayer_jax.parallel.rules import LAYOUTS, layout, logical_sharding

VARIANTS = ("box", "paper")


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
      clear_margin: static; the layers' opacity ends at each foreground's box dilated
        by it: the pipeline clears the decoded alpha outside, and IRH composites the
        layers gated the same way (`pipeline.irh.foreground_gates`).
      attention_backend: the concrete kernel of every attention call ("xla", "cudnn" or
        "splash"; `attention.backends.resolve_backend` turns "auto" into one).

    The paper variant's (None / unused in the box variant):
      token_owner: `int32[B, T]` the slot each token of the global layer's concatenated
        prompt belongs to, -1 for specials and padding (`pipeline.paper_prompts`).
      own_tokens: `bool[B, L, T]` the tokens of each layer's own prompt.
      layer_mask: `bool[B, L, L]` which layers each layer's LSSA reads; None = the valid
        ones (decomposition's inversion passes eq. 15's mask).
      timesteps: `[B]` the scenes' timesteps (set by the UNet; the blend reads them).
      context_maps: `[B, L, hm, wm]` the refined context maps, set for the up path.
      context_sizes: static `(h, w)` of the context blocks; blend_until: `T_G`.
      phase: static, "down" (down path and mid block) or "up".
      mesh, layer_parallel: LSSA partitioned over the mesh's "layer" axis when its size
        is > 1, by "allgather", "ring" or "auto" (`parallel.layer_attention`).
    """

    layer_valid: jax.Array
    roles: jax.Array
    boxes: jax.Array
    text: jax.Array
    added: dict[str, jax.Array] | None = None
    token_owner: jax.Array | None = None
    own_tokens: jax.Array | None = None
    layer_mask: jax.Array | None = None
    timesteps: jax.Array | None = None
    context_maps: jax.Array | None = None
    caca: bool = struct.field(pytree_node=False, default=True)
    lssa: bool = struct.field(pytree_node=False, default=True)
    lssa_scope: Literal["global", "all"] = struct.field(pytree_node=False, default="global")
    box_margin: float = struct.field(pytree_node=False, default=0.05)
    clear_margin: float = struct.field(pytree_node=False, default=0.0)
    attention_backend: str = struct.field(pytree_node=False, default="xla")
    variant: Literal["box", "paper"] = struct.field(pytree_node=False, default="box")
    context_sizes: tuple[tuple[int, int], ...] = struct.field(pytree_node=False, default=())
    blend_until: float = struct.field(pytree_node=False, default=850.0)
    phase: Literal["down", "up"] = struct.field(pytree_node=False, default="down")
    mesh: Mesh | None = struct.field(pytree_node=False, default=None)
    layer_parallel: str = struct.field(pytree_node=False, default="auto")

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

    @property
    def uses_context_maps(self) -> bool:
        """Whether this forward pass extracts context maps (paper variant with CACA)."""
        return self.variant == "paper" and self.caca

    def lssa_layer_mask(self) -> jax.Array:
        """`bool[B, L, L]`: the layers each layer's paper LSSA reads."""
        if self.layer_mask is not None:
            return self.layer_mask & self.layer_valid[:, None, :]
        return jnp.broadcast_to(self.layer_valid[:, None, :], (*self.layer_valid.shape,
                                                               self.num_layers))

    def mix_hidden(self, x: jax.Array) -> jax.Array:
        """A transformer's input `x[B*L, h, w, C]` before its blocks: the paper's early
        context-map blend in the up path while `t >= T_G`; unchanged otherwise."""
        if not (self.phase == "up" and self.lssa and self.context_maps is not None):
            return x
        return paper.context_blend(x, self.context_maps, self.timesteps >= self.blend_until)

    def attention_fns(self, h: int, w: int) -> tuple[AttendFn, AttendFn]:
        """The (self, cross) attention functions for a block at spatial size `h x w`.

        A mechanism switched off is plain per-layer attention on the same backend. In
        the paper variant a cross function at a context block returns `(out, record)`
        (`attention.paper.cross_attention_with_maps`).
        """
        if self.variant == "paper":
            return self._paper_fns(h, w)
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

    def _paper_fns(self, h: int, w: int) -> tuple[AttendFn, AttendFn]:
        backend = self.attention_backend

        def plain(q, k, v):
            return attend(q, k, v, backend=backend)

        self_fn = cross_fn = plain
        if self.lssa and self.phase == "up":
            def self_fn(q, k, v):
                return paper.all_layer_lssa(q, k, v, self.lssa_layer_mask(), backend=backend,
                                            mesh=self.mesh, method=self.layer_parallel)
        if self.uses_context_maps and self.phase == "down" and (h, w) in self.context_sizes:
            def cross_fn(q, k, v):
                return paper.cross_attention_with_maps(
                    q, k, v, num_layers=self.num_layers, token_owner=self.token_owner,
                    own_tokens=self.own_tokens, h=h, w=w)
        return self_fn, cross_fn

    def shardings(self, mesh: Mesh) -> LayerContext:
        """A pytree of `NamedSharding`s like this context, by `parallel.rules.LAYOUTS`:
        `[B, L, ...]` arrays over `("data", "fsdp") x "layer"`, `token_owner [B, T]` and
        `timesteps [B]` over the batch axes only."""
        def spec(path, a):
            name = str(getattr(path[-1], "name", getattr(path[-1], "key", "")))
            names = layout(name if name in LAYOUTS else "layer_valid", a.ndim)
            return logical_sharding(mesh, names)

        return jax.tree_util.tree_map_with_path(spec, self)


def make_roles(layer_valid: jax.Array) -> jax.Array:
    """`int32[B, L]` roles for the fixed slot layout: background, foregrounds, global."""
    num_layers = layer_valid.shape[-1]
    roles = jnp.full(layer_valid.shape, ROLE_FOREGROUND, jnp.int32)
    roles = roles.at[..., 0].set(ROLE_BACKGROUND)
    return roles.at[..., num_layers - 1].set(ROLE_GLOBAL)
