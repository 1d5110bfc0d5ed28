"""Stable Diffusion's residual block and its down/up-samplers (NHWC).

Its convolutions run fastest on the CPU with the XLA flags `import dreamlayer_jax` sets
(`dreamlayer_jax.xla_flags`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dreamlayer_jax.models.group_norm import GroupNorm


def group_norm(
    channels: int, groups: int, eps: float, *, rngs: nnx.Rngs, dtype: jnp.dtype
) -> GroupNorm:
    """A `GroupNorm` over the last axis like `torch.nn.GroupNorm` (one pass over the data
    for its statistics, `models.group_norm`)."""
    return GroupNorm(channels, num_groups=groups, epsilon=eps, dtype=dtype, rngs=rngs)


def _conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                          padding: Any, **kwargs: Any) -> jax.Array:
    """`lax.conv_general_dilated` for `nnx.Conv` (`lhs [N, H, W, C]`, `rhs [kh, kw, C, O]`),
    except on the CPU when the input is smaller than twice the kernel (a 3x3 conv on 2x2
    or 4x4 pixels: SD1.5's two lowest levels at 16x16 latents, its lowest at 32x32). XLA's
    CPU compiler (jaxlib 0.10) swaps a convolution whose input is smaller than its kernel
    (the kernel as the input), and the swapped form runs ~90x slower (3x3, 1280 channels,
    4 images of 2x2: 2.3 s instead of 25 ms); the gradient's transposed convolutions of
    4x4 inputs fall into it too (the input gradient of a stride-2 3x3 conv from 4x4 to
    2x2, 1280 channels: 350 ms against 8 ms forward; of the stride-1 conv at 4x4: 75 ms
    against 16). There it runs as one matmul over the `kh * kw` shifted views instead
    (im2col), whose gradient is matmuls too: 13 and 23 ms for those two. Same values."""
    dims = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
    kh, kw = rhs.shape[:2]
    if (jax.default_backend() != "cpu" or isinstance(padding, str) or lhs.ndim != 4
            or (lhs.shape[1] >= 2 * kh and lhs.shape[2] >= 2 * kw)
            or kwargs.get("dimension_numbers") != dims
            or kwargs.get("feature_group_count", 1) != 1
            or any(d != 1 for k in ("lhs_dilation", "rhs_dilation")
                   for d in (kwargs.get(k) or (1,)))):
        return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, **kwargs)
    (top, bottom), (left, right) = padding
    sh, sw = window_strides
    x = jnp.pad(lhs, ((0, 0), (top, bottom), (left, right), (0, 0)))
    oh, ow = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
    cols = jnp.concatenate([x[:, i:i + (oh - 1) * sh + 1:sh, j:j + (ow - 1) * sw + 1:sw]
                            for i in range(kh) for j in range(kw)], axis=-1)
    return jnp.dot(cols, rhs.reshape(kh * kw * rhs.shape[2], rhs.shape[3]),
                   precision=kwargs.get("precision"),
                   preferred_element_type=kwargs.get("preferred_element_type"))


def conv2d(
    in_channels: int,
    out_channels: int,
    kernel: int,
    *,
    stride: int = 1,
    padding: int | tuple[tuple[int, int], tuple[int, int]] | None = None,
    rngs: nnx.Rngs,
    dtype: jnp.dtype,
) -> nnx.Conv:
    """A 2-D conv with torch's explicit padding (default `(kernel - 1) // 2` on every side)."""
    if padding is None:
        padding = (kernel - 1) // 2
    if isinstance(padding, int):
        padding = ((padding, padding), (padding, padding))
    return nnx.Conv(
        in_channels, out_channels, (kernel, kernel), strides=stride, padding=padding,
        dtype=dtype, rngs=rngs, conv_general_dilated=_conv_general_dilated,
    )


class ResnetBlock2D(nnx.Module):
    """`(shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x))) + proj(silu(temb)))))) / scale`.

    Maps `x[N, H, W, in_channels]` and `temb[N, temb_channels]` to `[N, H, W, out_channels]`;
    the shortcut is a 1x1 conv when the channel count changes.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        *,
        groups: int,
        eps: float,
        output_scale_factor: float = 1.0,
        rngs: nnx.Rngs,
        dtype: jnp.dtype = jnp.float32,
    ):
        self.output_scale_factor = output_scale_factor
        self.norm1 = group_norm(in_channels, groups, eps, rngs=rngs, dtype=dtype)
        self.conv1 = conv2d(in_channels, out_channels, 3, rngs=rngs, dtype=dtype)
        self.time_emb_proj = nnx.Linear(temb_channels, out_channels, dtype=dtype, rngs=rngs)
        self.norm2 = group_norm(out_channels, groups, eps, rngs=rngs, dtype=dtype)
        self.conv2 = conv2d(out_channels, out_channels, 3, rngs=rngs, dtype=dtype)
        self.conv_shortcut = (
            conv2d(in_channels, out_channels, 1, rngs=rngs, dtype=dtype)
            if in_channels != out_channels
            else None
        )

    def __call__(self, x: jax.Array, temb: jax.Array) -> jax.Array:
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        h = h + self.time_emb_proj(jax.nn.silu(temb))[:, None, None, :]
        h = self.conv2(jax.nn.silu(self.norm2(h)))
        shortcut = self.conv_shortcut(x) if self.conv_shortcut is not None else x
        out = shortcut + h
        if self.output_scale_factor != 1.0:
            out = out / self.output_scale_factor
        return out


class Downsample2D(nnx.Module):
    """A stride-2 3x3 conv: `[N, H, W, C] -> [N, ceil(H / 2), ceil(W / 2), C]` for padding 1.

    `padding=0` pads one row and column at the bottom/right only, as diffusers does.
    """

    def __init__(
        self, channels: int, *, padding: int = 1, rngs: nnx.Rngs, dtype: jnp.dtype = jnp.float32
    ):
        pads = ((0, 1), (0, 1)) if padding == 0 else ((padding, padding), (padding, padding))
        self.conv = conv2d(channels, channels, 3, stride=2, padding=pads, rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv(x)


def _nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """Source indices of torch's `interpolate(mode="nearest")` along one axis."""
    if out_size == 2 * in_size:
        return np.arange(out_size) // 2
    if out_size == in_size:
        return np.arange(out_size)
    scale = np.float32(in_size) / np.float32(out_size)
    index = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(index, in_size - 1)


def resize_nearest(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """`x[N, H, W, C] -> [N, size[0], size[1], C]`, nearest neighbour as in PyTorch."""
    _, height, width, _ = x.shape
    if tuple(size) == (2 * height, 2 * width):
        return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    x = jnp.take(x, _nearest_indices(height, size[0]), axis=1)
    return jnp.take(x, _nearest_indices(width, size[1]), axis=2)


def _phase_taps(kernel: jax.Array, axis: int) -> tuple[jax.Array, jax.Array]:
    """A 3-tap axis of `kernel` folded for the two output phases of a nearest 2x
    upsampling: phase 0 reads input offsets (-1, 0) with taps (k0, k1 + k2), phase 1
    offsets (0, +1) with (k0 + k1, k2)."""
    k0, k1, k2 = (jnp.take(kernel, i, axis=axis) for i in range(3))
    return jnp.stack([k0, k1 + k2], axis), jnp.stack([k0 + k1, k2], axis)


def upsample_conv(conv: nnx.Conv, x: jax.Array) -> jax.Array:
    """`conv(nearest_2x(x))` for a 3x3, stride-1, padding-1 `conv`: `x [N, H, W, C] ->
    [N, 2H, 2W, O]`, computed on the low-resolution input.

    Output pixel `(2i + a, 2j + b)` sees only input rows `i - 1, i` (a = 0) or `i, i + 1`
    (a = 1), and likewise columns, so each of the four output phases is a 2x2 conv of
    the zero-padded input with the 3x3 taps summed in pairs (`_phase_taps`); the phases
    interleave into the output. 16 multiply-adds per output pair where the upsampled
    conv spends 36 (2.25x fewer FLOPs; about 2x faster on the CPU at the VAE decoder's
    shapes). The same function: only the rounding of the summed taps differs (~1e-7)."""
    bias = conv.bias[...] if conv.bias is not None else None
    x, kernel, bias = conv.promote_dtype((x, conv.kernel[...], bias), dtype=conv.dtype)
    n, h, w, _ = x.shape
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    # every phase: a 2x2 conv of an [N, H + 1, W + 1, C] window
    dims = jax.lax.conv_dimension_numbers((n, h + 1, w + 1, x.shape[-1]),
                                          (2, 2, *kernel.shape[2:]), ("NHWC", "HWIO", "NHWC"))
    rows = []
    for a, row_taps in enumerate(_phase_taps(kernel, 0)):
        cols = []
        for b, taps in enumerate(_phase_taps(row_taps, 1)):
            window = padded[:, a:a + h + 1, b:b + w + 1]
            cols.append(_conv_general_dilated(window, taps, (1, 1), ((0, 0), (0, 0)),
                                              dimension_numbers=dims,
                                              precision=conv.precision))
        rows.append(jnp.stack(cols, axis=3))  # [N, H, W, 2 (b), O]
    y = jnp.stack(rows, axis=2).reshape(n, 2 * h, 2 * w, kernel.shape[-1])  # [N, H, 2, W, 2, O]
    return y if bias is None else y + bias


def is_upsample_conv(conv: nnx.Conv) -> bool:
    """Whether `upsample_conv` computes `conv` after a nearest 2x upsampling."""
    return (tuple(conv.kernel_size) == (3, 3) and conv.strides in (1, (1, 1))
            and conv.padding in (1, ((1, 1), (1, 1)), [(1, 1), (1, 1)])
            and conv.feature_group_count == 1
            and conv.input_dilation in (None, 1, (1, 1))
            and conv.kernel_dilation in (None, 1, (1, 1)))


class Upsample2D(nnx.Module):
    """Nearest-neighbour upsampling (x2, or to `output_size`) followed by a 3x3 conv."""

    def __init__(self, channels: int, *, rngs: nnx.Rngs, dtype: jnp.dtype = jnp.float32):
        self.conv = conv2d(channels, channels, 3, rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array, output_size: tuple[int, int] | None = None) -> jax.Array:
        _, height, width, _ = x.shape
        size = (2 * height, 2 * width) if output_size is None else tuple(output_size)
        if size == (2 * height, 2 * width) and is_upsample_conv(self.conv):
            return upsample_conv(self.conv, x)
        return self.conv(resize_nearest(x, size))
