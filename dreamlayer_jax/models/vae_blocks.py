"""The building blocks of Stable Diffusion's AutoencoderKL (NHWC), named as in diffusers.

These are the VAE's own blocks: its resnets take no time embedding and its mid-block
attention is a single-head spatial self-attention with a residual connection. Attribute
names follow diffusers' state dict (`resnets.0.norm1`, `attentions.0.to_out.0`,
`downsamplers.0.conv`, `upsamplers.0.conv`) so that weights map one to one.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from dreamlayer_jax.errors import ConfigError
from dreamlayer_jax.models.group_norm import GroupNorm
from dreamlayer_jax.models.resnet import upsample_conv

EPS = 1e-6  # diffusers builds every VAE norm with eps=1e-6

_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "mish": lambda x: x * jnp.tanh(jax.nn.softplus(x)),
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """The activation diffusers' `get_activation(name)` returns, as a JAX function."""
    try:
        return _ACTIVATIONS[name.lower()]
    except KeyError:
        raise ConfigError(
            f"act_fn={name!r} is not supported (allowed: {sorted(_ACTIVATIONS)})"
        ) from None


def group_norm(channels: int, groups: int, *, rngs: nnx.Rngs, dtype: jnp.dtype) -> GroupNorm:
    """A GroupNorm over `[N, H, W, C]` like torch's (eps 1e-6; one pass over the data for
    its statistics, `models.group_norm`)."""
    return GroupNorm(channels, num_groups=groups, epsilon=EPS, dtype=dtype, rngs=rngs)


def conv3x3(c_in: int, c_out: int, *, rngs: nnx.Rngs, dtype: jnp.dtype, stride: int = 1,
            padding: tuple[tuple[int, int], tuple[int, int]] = ((1, 1), (1, 1))) -> nnx.Conv:
    """A 3x3 convolution with explicit (torch-style) padding."""
    return nnx.Conv(c_in, c_out, (3, 3), strides=stride, padding=padding, dtype=dtype, rngs=rngs)


def conv1x1(c_in: int, c_out: int, *, rngs: nnx.Rngs, dtype: jnp.dtype) -> nnx.Conv:
    """A 1x1 convolution (stored as a `[out, in, 1, 1]` torch conv)."""
    return nnx.Conv(c_in, c_out, (1, 1), padding="VALID", dtype=dtype, rngs=rngs)


class VAEResnetBlock(nnx.Module):
    """diffusers' `ResnetBlock2D` without time embedding.

    `out = shortcut(x) + conv2(act(norm2(conv1(act(norm1(x))))))`, where the shortcut is a
    1x1 `conv_shortcut` when the channel count changes and the identity otherwise.
    """

    def __init__(self, c_in: int, c_out: int, groups: int, act_fn: str, *, rngs: nnx.Rngs,
                 dtype: jnp.dtype = jnp.float32):
        self.act = activation(act_fn)
        self.norm1 = group_norm(c_in, groups, rngs=rngs, dtype=dtype)
        self.conv1 = conv3x3(c_in, c_out, rngs=rngs, dtype=dtype)
        self.norm2 = group_norm(c_out, groups, rngs=rngs, dtype=dtype)
        self.conv2 = conv3x3(c_out, c_out, rngs=rngs, dtype=dtype)
        self.conv_shortcut = conv1x1(c_in, c_out, rngs=rngs, dtype=dtype) if c_in != c_out else None

    def __call__(self, x: jax.Array) -> jax.Array:
        """`x [N, H, W, c_in] -> [N, H, W, c_out]`."""
        h = self.conv1(self.act(self.norm1(x)))
        h = self.conv2(self.act(self.norm2(h)))
        shortcut = self.conv_shortcut(x) if self.conv_shortcut is not None else x
        return shortcut + h


class VAEAttention(nnx.Module):
    """Single-head self-attention over the `H * W` positions, with a residual connection."""

    def __init__(self, channels: int, groups: int, *, rngs: nnx.Rngs,
                 dtype: jnp.dtype = jnp.float32):
        self.group_norm = group_norm(channels, groups, rngs=rngs, dtype=dtype)
        self.to_q = nnx.Linear(channels, channels, dtype=dtype, rngs=rngs)
        self.to_k = nnx.Linear(channels, channels, dtype=dtype, rngs=rngs)
        self.to_v = nnx.Linear(channels, channels, dtype=dtype, rngs=rngs)
        self.to_out = nnx.List([nnx.Linear(channels, channels, dtype=dtype, rngs=rngs)])

    def __call__(self, x: jax.Array) -> jax.Array:
        """`x [N, H, W, C] -> [N, H, W, C]`."""
        n, h, w, c = x.shape
        tokens = self.group_norm(x).reshape(n, h * w, 1, c)  # [N, HW, heads=1, C]
        q, k, v = self.to_q(tokens), self.to_k(tokens), self.to_v(tokens)
        attended = jax.nn.dot_product_attention(q, k, v)  # softmax in float32
        return x + self.to_out[0](attended.reshape(n, h, w, c))


class Downsample(nnx.Module):
    """Stride-2 3x3 conv after padding one row/column at the bottom/right (as diffusers)."""

    def __init__(self, channels: int, *, rngs: nnx.Rngs, dtype: jnp.dtype = jnp.float32):
        self.conv = conv3x3(channels, channels, rngs=rngs, dtype=dtype, stride=2,
                            padding=((0, 1), (0, 1)))

    def __call__(self, x: jax.Array) -> jax.Array:
        """`x [N, H, W, C] -> [N, H // 2, W // 2, C]`."""
        return self.conv(x)


class Upsample(nnx.Module):
    """Nearest-neighbour 2x upsampling followed by a 3x3 conv (computed as one on the
    low-resolution input, `resnet.upsample_conv`)."""

    def __init__(self, channels: int, *, rngs: nnx.Rngs, dtype: jnp.dtype = jnp.float32):
        self.conv = conv3x3(channels, channels, rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        """`x [N, H, W, C] -> [N, 2H, 2W, C]`."""
        return upsample_conv(self.conv, x)


class DownEncoderBlock(nnx.Module):
    """diffusers' `DownEncoderBlock2D`: `num_layers` resnets, then an optional downsampler."""

    def __init__(self, c_in: int, c_out: int, num_layers: int, groups: int, act_fn: str,
                 add_downsample: bool, *, rngs: nnx.Rngs, dtype: jnp.dtype = jnp.float32):
        self.resnets = nnx.List([
            VAEResnetBlock(c_in if i == 0 else c_out, c_out, groups, act_fn, rngs=rngs, dtype=dtype)
            for i in range(num_layers)
        ])
        self.downsamplers = (nnx.List([Downsample(c_out, rngs=rngs, dtype=dtype)])
                             if add_downsample else None)

    def __call__(self, x: jax.Array) -> jax.Array:
        """`x [N, H, W, c_in] -> [N, H', W', c_out]` (`H' = H // 2` with a downsampler)."""
        for resnet in self.resnets:
            x = resnet(x)
        for down in self.downsamplers or ():
            x = down(x)
        return x


class UpDecoderBlock(nnx.Module):
    """diffusers' `UpDecoderBlock2D`: `num_layers` resnets, then an optional upsampler."""

    def __init__(self, c_in: int, c_out: int, num_layers: int, groups: int, act_fn: str,
                 add_upsample: bool, *, rngs: nnx.Rngs, dtype: jnp.dtype = jnp.float32):
        self.resnets = nnx.List([
            VAEResnetBlock(c_in if i == 0 else c_out, c_out, groups, act_fn, rngs=rngs, dtype=dtype)
            for i in range(num_layers)
        ])
        self.upsamplers = (nnx.List([Upsample(c_out, rngs=rngs, dtype=dtype)])
                           if add_upsample else None)

    def __call__(self, x: jax.Array) -> jax.Array:
        """`x [N, H, W, c_in] -> [N, H', W', c_out]` (`H' = 2H` with an upsampler)."""
        for resnet in self.resnets:
            x = resnet(x)
        for up in self.upsamplers or ():
            x = up(x)
        return x


class VAEMidBlock(nnx.Module):
    """diffusers' `UNetMidBlock2D` as the VAE uses it: resnet, (attention, resnet)."""

    def __init__(self, channels: int, groups: int, act_fn: str, add_attention: bool, *,
                 rngs: nnx.Rngs, dtype: jnp.dtype = jnp.float32):
        self.resnets = nnx.List([
            VAEResnetBlock(channels, channels, groups, act_fn, rngs=rngs, dtype=dtype)
            for _ in range(2)
        ])
        self.attentions = nnx.List(
            [VAEAttention(channels, groups, rngs=rngs, dtype=dtype)] if add_attention else []
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """`x [N, H, W, C] -> [N, H, W, C]`."""
        x = self.resnets[0](x)
        for attention in self.attentions:
            x = attention(x)
        return self.resnets[1](x)
