"""The blocks of LayerDiffuse's `UNet1024` (NHWC), named as diffusers' PyTorch blocks.

LayerDiffuse builds its transparent VAE decoder from diffusers' `DownBlock2D`,
`AttnDownBlock2D`, `UNetMidBlock2D`, `AttnUpBlock2D` and `UpBlock2D` with no time
embedding (`temb_channels=None`). So its resnets have no `time_emb_proj`, and its
attention is diffusers' `Attention` as built for these blocks: a GroupNorm, q/k/v/out
projections with bias, `channels // head_dim` heads and a residual connection. Attribute
names follow the state dict (`resnets.0.norm1`, `attentions.0.to_out.0`,
`downsamplers.0.conv`, `upsamplers.0.conv`) so the weights map one to one.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from dreamlayer_jax.models.attention import dot_product_attend
from dreamlayer_jax.models.resnet import Downsample2D, Upsample2D, conv2d, group_norm


class Resnet(nnx.Module):
    """diffusers' `ResnetBlock2D(temb_channels=None)`: `x [N, H, W, c_in] -> [N, H, W, c_out]`.

    `out = shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x))))))`; the shortcut is a 1x1
    `conv_shortcut` when the channel count changes.
    """

    def __init__(self, c_in: int, c_out: int, *, groups: int, eps: float, rngs: nnx.Rngs,
                 dtype: jnp.dtype = jnp.float32):
        self.norm1 = group_norm(c_in, groups, eps, rngs=rngs, dtype=dtype)
        self.conv1 = conv2d(c_in, c_out, 3, rngs=rngs, dtype=dtype)
        self.norm2 = group_norm(c_out, groups, eps, rngs=rngs, dtype=dtype)
        self.conv2 = conv2d(c_out, c_out, 3, rngs=rngs, dtype=dtype)
        self.conv_shortcut = (conv2d(c_in, c_out, 1, rngs=rngs, dtype=dtype)
                              if c_in != c_out else None)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        h = self.conv2(jax.nn.silu(self.norm2(h)))
        shortcut = self.conv_shortcut(x) if self.conv_shortcut is not None else x
        return shortcut + h


class SpatialAttention(nnx.Module):
    """Multi-head self-attention over the `H * W` positions with a residual connection.

    `x [N, H, W, C] -> [N, H, W, C]`, `C // head_dim` heads of `head_dim` channels.
    """

    def __init__(self, channels: int, *, head_dim: int, groups: int, eps: float,
                 rngs: nnx.Rngs, dtype: jnp.dtype = jnp.float32):
        self.heads = channels // head_dim
        self.head_dim = head_dim
        self.group_norm = group_norm(channels, groups, eps, rngs=rngs, dtype=dtype)
        self.to_q = nnx.Linear(channels, channels, dtype=dtype, rngs=rngs)
        self.to_k = nnx.Linear(channels, channels, dtype=dtype, rngs=rngs)
        self.to_v = nnx.Linear(channels, channels, dtype=dtype, rngs=rngs)
        self.to_out = nnx.List([nnx.Linear(channels, channels, dtype=dtype, rngs=rngs)])

    def __call__(self, x: jax.Array) -> jax.Array:
        n, h, w, c = x.shape
        tokens = self.group_norm(x).reshape(n, h * w, c)

        def heads(t: jax.Array) -> jax.Array:
            return t.reshape(n, h * w, self.heads, self.head_dim)

        q, k, v = heads(self.to_q(tokens)), heads(self.to_k(tokens)), heads(self.to_v(tokens))
        attended = dot_product_attend(q, k, v).astype(x.dtype).reshape(n, h * w, c)
        return x + self.to_out[0](attended).reshape(n, h, w, c)


def _attentions(channels: int, count: int, head_dim: int | None, groups: int, eps: float,
                rngs: nnx.Rngs, dtype: jnp.dtype) -> nnx.List | None:
    if head_dim is None:
        return None
    return nnx.List([SpatialAttention(channels, head_dim=head_dim, groups=groups, eps=eps,
                                      rngs=rngs, dtype=dtype) for _ in range(count)])


class DownBlock(nnx.Module):
    """`DownBlock2D` (`head_dim=None`) or `AttnDownBlock2D`: resnets (each followed by an
    attention in the second kind), then a stride-2 conv unless it is the last block.

    `x [N, H, W, c_in] -> ([N, H', W', c_out], skips)`, the skips in down order.
    """

    def __init__(self, c_in: int, c_out: int, *, num_layers: int, head_dim: int | None,
                 add_downsample: bool, groups: int, eps: float, rngs: nnx.Rngs,
                 dtype: jnp.dtype = jnp.float32):
        self.resnets = nnx.List([
            Resnet(c_in if i == 0 else c_out, c_out, groups=groups, eps=eps, rngs=rngs,
                   dtype=dtype)
            for i in range(num_layers)
        ])
        self.attentions = _attentions(c_out, num_layers, head_dim, groups, eps, rngs, dtype)
        self.downsamplers = (nnx.List([Downsample2D(c_out, padding=1, rngs=rngs, dtype=dtype)])
                             if add_downsample else None)

    def __call__(self, x: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
        skips = []
        for i, resnet in enumerate(self.resnets):
            x = resnet(x)
            if self.attentions is not None:
                x = self.attentions[i](x)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class MidBlock(nnx.Module):
    """`UNetMidBlock2D` with one attention: resnet, attention, resnet; channels kept."""

    def __init__(self, channels: int, *, head_dim: int, groups: int, eps: float,
                 rngs: nnx.Rngs, dtype: jnp.dtype = jnp.float32):
        self.attentions = _attentions(channels, 1, head_dim, groups, eps, rngs, dtype)
        self.resnets = nnx.List([
            Resnet(channels, channels, groups=groups, eps=eps, rngs=rngs, dtype=dtype)
            for _ in range(2)
        ])

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.resnets[0](x)
        return self.resnets[1](self.attentions[0](x))


class UpBlock(nnx.Module):
    """`UpBlock2D` (`head_dim=None`) or `AttnUpBlock2D`: each resnet on `concat(x, skip)`
    (then an attention in the second kind), then a x2 upsampler unless it is the last.

    `prev_channels` is the input's channel count, `skip_channels` that of the mirrored
    down block's input (its last skip); the other skips have `c_out` channels.
    """

    def __init__(self, skip_channels: int, c_out: int, prev_channels: int, *, num_layers: int,
                 head_dim: int | None, add_upsample: bool, groups: int, eps: float,
                 rngs: nnx.Rngs, dtype: jnp.dtype = jnp.float32):
        def resnet(i: int) -> Resnet:
            x_channels = prev_channels if i == 0 else c_out
            res_channels = skip_channels if i == num_layers - 1 else c_out
            return Resnet(x_channels + res_channels, c_out, groups=groups, eps=eps, rngs=rngs,
                          dtype=dtype)

        self.resnets = nnx.List([resnet(i) for i in range(num_layers)])
        self.attentions = _attentions(c_out, num_layers, head_dim, groups, eps, rngs, dtype)
        self.upsamplers = (nnx.List([Upsample2D(c_out, rngs=rngs, dtype=dtype)])
                           if add_upsample else None)

    def __call__(self, x: jax.Array, skips: Sequence[jax.Array]) -> jax.Array:
        """`skips`: this block's `len(resnets)` skip activations in down-block order."""
        skips = list(skips)
        for i, resnet in enumerate(self.resnets):
            x = resnet(jnp.concatenate([x, skips.pop()], axis=-1))
            if self.attentions is not None:
                x = self.attentions[i](x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x
