"""Stable Diffusion's spatial transformer: `Transformer2DModel` and its `BasicTransformerBlock`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from dreamlayer_jax.models.attention import AttendFn, Attention, LayerAttentionContext
from dreamlayer_jax.models.resnet import conv2d, group_norm


def layer_norm(dim: int, *, rngs: nnx.Rngs, dtype: jnp.dtype) -> nnx.LayerNorm:
    """`torch.nn.LayerNorm(dim)`: eps 1e-5, affine."""
    return nnx.LayerNorm(dim, epsilon=1e-5, use_fast_variance=False, dtype=dtype, rngs=rngs)


class GEGLU(nnx.Module):
    """`a * gelu(b)` where `[a, b] = proj(x)`: `[..., dim_in] -> [..., dim_out]` (exact GELU)."""

    def __init__(self, dim_in: int, dim_out: int, *, rngs: nnx.Rngs, dtype: jnp.dtype):
        self.proj = nnx.Linear(dim_in, 2 * dim_out, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        hidden, gate = jnp.split(self.proj(x), 2, axis=-1)
        return hidden * jax.nn.gelu(gate, approximate=False)


class FeedForward(nnx.Module):
    """`net.2(net.1(net.0(x)))`: GEGLU to `4 * dim`, dropout slot (no-op), linear back to `dim`."""

    def __init__(self, dim: int, *, rngs: nnx.Rngs, dtype: jnp.dtype = jnp.float32):
        inner = 4 * dim
        self.net = nnx.List(
            [
                GEGLU(dim, inner, rngs=rngs, dtype=dtype),
                nnx.Dropout(0.0),
                nnx.Linear(inner, dim, dtype=dtype, rngs=rngs),
            ]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.net:
            x = layer(x)
        return x


class BasicTransformerBlock(nnx.Module):
    """Pre-norm self-attention, cross-attention to the text, feed-forward; each residual.

    `x[N, T, dim]`, `context[N, Tc, context_dim]` -> `[N, T, dim]`. `self_attend` and
    `cross_attend` replace the plain attention kernels when given.
    """

    def __init__(
        self,
        dim: int,
        *,
        heads: int,
        head_dim: int,
        context_dim: int,
        upcast_attention: bool = False,
        rngs: nnx.Rngs,
        dtype: jnp.dtype = jnp.float32,
    ):
        attn = dict(heads=heads, head_dim=head_dim, upcast=upcast_attention, rngs=rngs, dtype=dtype)
        self.norm1 = layer_norm(dim, rngs=rngs, dtype=dtype)
        self.attn1 = Attention(dim, **attn)
        self.norm2 = layer_norm(dim, rngs=rngs, dtype=dtype)
        self.attn2 = Attention(dim, context_dim=context_dim, **attn)
        self.norm3 = layer_norm(dim, rngs=rngs, dtype=dtype)
        self.ff = FeedForward(dim, rngs=rngs, dtype=dtype)

    def __call__(
        self,
        x: jax.Array,
        context: jax.Array,
        *,
        self_attend: AttendFn | None = None,
        cross_attend: AttendFn | None = None,
        num_layers: int | None = None,
    ) -> jax.Array:
        x = x + self.attn1(self.norm1(x), attend=self_attend, num_layers=num_layers)
        x = x + self.attn2(self.norm2(x), context, attend=cross_attend, num_layers=num_layers)
        return x + self.ff(self.norm3(x))


class Transformer2DModel(nnx.Module):
    """Group norm, projection in, `num_layers` transformer blocks over the `H * W` tokens,
    projection out, residual: `x[N, H, W, C]`, `context[N, Tc, context_dim]` -> `[N, H, W, C]`.

    The projections are 1x1 convs, or linears with `use_linear_projection` (SD 2.x, SDXL).
    With a `layer_ctx`, its `mix_hidden` rewrites the input first (the paper variant's
    early blend) and its `attention_fns(H, W)` supply every block's attention kernels.
    """

    def __init__(
        self,
        channels: int,
        *,
        heads: int,
        context_dim: int,
        num_layers: int = 1,
        groups: int = 32,
        use_linear_projection: bool = False,
        upcast_attention: bool = False,
        rngs: nnx.Rngs,
        dtype: jnp.dtype = jnp.float32,
    ):
        head_dim = channels // heads
        inner = heads * head_dim
        self.norm = group_norm(channels, groups, 1e-6, rngs=rngs, dtype=dtype)
        if use_linear_projection:
            self.proj_in = nnx.Linear(channels, inner, dtype=dtype, rngs=rngs)
            self.proj_out = nnx.Linear(inner, channels, dtype=dtype, rngs=rngs)
        else:
            self.proj_in = conv2d(channels, inner, 1, rngs=rngs, dtype=dtype)
            self.proj_out = conv2d(inner, channels, 1, rngs=rngs, dtype=dtype)
        self.transformer_blocks = nnx.List(
            [
                BasicTransformerBlock(
                    inner, heads=heads, head_dim=head_dim, context_dim=context_dim,
                    upcast_attention=upcast_attention, rngs=rngs, dtype=dtype,
                )
                for _ in range(num_layers)
            ]
        )

    def __call__(
        self,
        x: jax.Array,
        context: jax.Array,
        *,
        layer_ctx: LayerAttentionContext | None = None,
    ) -> jax.Array:
        n, h, w, _ = x.shape
        self_attend = cross_attend = num_layers = None
        if layer_ctx is not None:
            x = layer_ctx.mix_hidden(x)
            self_attend, cross_attend = layer_ctx.attention_fns(h, w)
            num_layers = layer_ctx.num_layers
        residual = x
        x = self.proj_in(self.norm(x))  # a 1x1 conv and a linear agree on NHWC
        x = x.reshape(n, h * w, x.shape[-1])
        for block in self.transformer_blocks:
            x = block(x, context, self_attend=self_attend, cross_attend=cross_attend,
                      num_layers=num_layers)
        x = self.proj_out(x.reshape(n, h, w, x.shape[-1]))
        return x + residual
