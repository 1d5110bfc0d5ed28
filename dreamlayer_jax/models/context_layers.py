"""The paper variant's context-aware layers: refine the initial context maps.

The initial map of foreground `f`, `M_G^f [h, w]`, is the global layer's cross-attention
mass on `f`'s tokens summed over the context blocks and min-max normalised. `N` layers
of (multi-head self-attention over the `h*w` pixels + feed-forward), fed with the map
and the global layer's hidden states at those blocks (summed), predict a correction:
`M = M_G^f + head(...)`. The head starts at zero, so an untrained model uses the
initial maps unchanged. The paper gives neither `N` nor the widths
(`DreamLayerConfig.context_layers`, `context_width`, `context_heads`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from dreamlayer_jax.models.attention import Attention


class ContextAwareLayer(nnx.Module):
    """Pre-norm self-attention over the pixels, then a GELU feed-forward; both residual.

    `x[N, h*w, width] -> [N, h*w, width]`.
    """

    def __init__(self, width: int, heads: int, *, rngs: nnx.Rngs):
        self.norm1 = nnx.LayerNorm(width, rngs=rngs)
        self.attn = Attention(width, heads=heads, head_dim=width // heads, rngs=rngs)
        self.norm2 = nnx.LayerNorm(width, rngs=rngs)
        self.ff_in = nnx.Linear(width, 4 * width, rngs=rngs)
        self.ff_out = nnx.Linear(4 * width, width, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attn(self.norm1(x))
        return x + self.ff_out(jax.nn.gelu(self.ff_in(self.norm2(x))))


class ContextAwareLayers(nnx.Module):
    """`(maps[B, F, h, w], hidden[B, h, w, C]) -> refined maps [B, F, h, w]`.

    Each of the `F` foreground maps is refined on its own (folded into the batch) with
    the scene's global hidden states; `hidden_dim` is the context blocks' channel width.
    """

    def __init__(self, hidden_dim: int, *, width: int, depth: int, heads: int,
                 rngs: nnx.Rngs):
        self.hidden_in = nnx.Linear(hidden_dim, width, rngs=rngs)
        self.map_in = nnx.Linear(1, width, rngs=rngs)
        self.layers = nnx.List([ContextAwareLayer(width, heads, rngs=rngs)
                                for _ in range(depth)])
        self.norm_out = nnx.LayerNorm(width, rngs=rngs)
        self.head = nnx.Linear(width, 1, kernel_init=nnx.initializers.zeros, rngs=rngs)

    def __call__(self, maps: jax.Array, hidden: jax.Array) -> jax.Array:
        b, f, h, w = maps.shape
        if f == 0:
            return maps
        feats = self.hidden_in(hidden.reshape(b, 1, h * w, -1).astype(jnp.float32))
        x = feats + self.map_in(maps.reshape(b, f, h * w, 1).astype(jnp.float32))
        x = x.reshape(b * f, h * w, -1)
        for layer in self.layers:
            x = layer(x)
        delta = self.head(self.norm_out(x)).reshape(b, f, h, w)
        return maps + delta
