"""LayerDiffuse's latent transparency offset encoder and its colour padding (NHWC).

LayerDiffuse encodes a transparent layer as an ordinary VAE latent moved by an offset:
`z = mean + std * offset` (mean and std of the VAE posterior). The offset comes from
`LatentTransparencyOffsetEncoder`, an `nn.Sequential` of 3x3 convs with SiLU between
(`blocks.0, 2, ..., 16` in the state dict of `vae_transparent_encoder.safetensors`):

    [alpha, padded RGB] [N, H, W, 4] -> 4->32, 32->32, 32->64 /2, 64->64, 64->128 /2,
    128->128, 128->256 /2, 256->256, 256->4 -> offset [N, H/8, W/8, 4]

"Padded RGB" (`pad_rgb`) fills transparent pixels with the colours of the opaque ones,
spread outwards by an alpha pyramid (LayerDiffuse's `build_alpha_pyramid` / `pad_rgb`:
levels shrunk by 1.2 with OpenCV's area resize, colours brought back up with OpenCV's
bilinear resize and composited under each level). The resizes are exact matrices of
OpenCV's weights, so this runs under `jit` on any backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dreamlayer_jax.errors import ConfigError, InputError
from dreamlayer_jax.models.config_base import ModelConfig
from dreamlayer_jax.models.pretrained import PretrainedMixin
from dreamlayer_jax.models.resnet import conv2d

PYRAMID_STEP = 1.2  # LayerDiffuse's `dk`


@dataclass(frozen=True)
class OffsetEncoderConfig(ModelConfig):
    """The offset encoder's convs: `channels[i]` with stride `strides[i]`, then one more
    3x3 conv to `out_channels`. Defaults are LayerDiffuse's released file."""

    in_channels: int = 4
    out_channels: int = 4
    channels: tuple[int, ...] = (32, 32, 64, 64, 128, 128, 256, 256)
    strides: tuple[int, ...] = (1, 1, 2, 1, 2, 1, 2, 1)

    @property
    def downscale(self) -> int:
        return int(np.prod(self.strides))

    def validate(self, raw: dict[str, Any]) -> None:
        if len(self.channels) != len(self.strides) or not self.channels:
            raise ConfigError("OffsetEncoderConfig: channels and strides need the same, "
                              "non-zero number of entries")
        if any(s not in (1, 2) for s in self.strides):
            raise ConfigError(f"OffsetEncoderConfig: strides must be 1 or 2, got {self.strides}")


class SiLU(nnx.Module):
    """The parameter-free `nn.SiLU()` entries at the odd indices of `blocks`."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.silu(x)


class TransparentVAEEncoder(PretrainedMixin, nnx.Module):
    """`encoder(alpha_rgb [N, H, W, 4]) -> offset [N, H/8, W/8, 4]` (input `[alpha, R, G, B]`).

    `offset(rgba)` builds that input from straight RGBA in [0, 1] (`[alpha, pad_rgb]`).
    """

    config_class: ClassVar[type[OffsetEncoderConfig]] = OffsetEncoderConfig
    torch_class_name: ClassVar[str] = "LatentTransparencyOffsetEncoder"

    def __init__(self, config: OffsetEncoderConfig | None = None, *, rngs: nnx.Rngs,
                 dtype: jnp.dtype = jnp.float32):
        config = config or OffsetEncoderConfig()
        self.config = config
        self.dtype = dtype
        blocks: list[nnx.Module] = []
        c_in = config.in_channels
        for c_out, stride in zip(config.channels, config.strides):
            blocks += [conv2d(c_in, c_out, 3, stride=stride, rngs=rngs, dtype=dtype), SiLU()]
            c_in = c_out
        blocks.append(conv2d(c_in, config.out_channels, 3, rngs=rngs, dtype=dtype))
        self.blocks = nnx.List(blocks)

    def __call__(self, alpha_rgb: jax.Array) -> jax.Array:
        f = self.config.downscale
        if (alpha_rgb.ndim != 4 or alpha_rgb.shape[-1] != self.config.in_channels
                or alpha_rgb.shape[1] % f or alpha_rgb.shape[2] % f):
            raise InputError(f"TransparentVAEEncoder expects [N, H, W, "
                             f"{self.config.in_channels}] with H, W multiples of {f}, got "
                             f"shape {tuple(alpha_rgb.shape)}")
        x = alpha_rgb.astype(self.dtype)
        for block in self.blocks:
            x = block(x)
        return x

    def offset(self, rgba: jax.Array) -> jax.Array:
        """The latent offset of straight RGBA `[N, H, W, 4]` in [0, 1]: `[N, H/8, W/8, 4]`."""
        return self(jnp.concatenate([rgba[..., 3:], pad_rgb(rgba)], axis=-1))


def pyramid_sizes(height: int, width: int, step: float = PYRAMID_STEP) -> list[tuple[int, int]]:
    """The `(h, w)` of each pyramid level, full size first, until a side is 1."""
    sizes = [(height, width)]
    while min(sizes[-1]) > 1:
        h, w = sizes[-1]
        sizes.append((int(h / step), int(w / step)))
    return sizes


@cache
def area_weights(src: int, dst: int) -> np.ndarray:
    """`[dst, src]` weights of OpenCV's `INTER_AREA` shrinking one axis (`dst <= src`)."""
    scale = src / dst
    out = np.zeros((dst, src), np.float64)
    if abs(scale - round(scale)) < np.finfo(np.float64).eps:  # OpenCV's integer-factor path
        k = round(scale)
        for d in range(dst):
            out[d, d * k:(d + 1) * k] = 1.0 / k
        return out.astype(np.float32)
    for d in range(dst):  # OpenCV's computeResizeAreaTab
        f1 = d * scale
        f2 = f1 + scale
        cell = min(scale, src - f1)
        s2 = min(int(np.floor(f2)), src - 1)
        s1 = min(int(np.ceil(f1)), s2)
        if s1 - f1 > 1e-3:
            out[d, s1 - 1] += (s1 - f1) / cell
        out[d, s1:s2] += 1.0 / cell
        if f2 - s2 > 1e-3:
            out[d, s2] += min(min(f2 - s2, 1.0), cell) / cell
    return out.astype(np.float32)


@cache
def linear_weights(src: int, dst: int) -> np.ndarray:
    """`[dst, src]` weights of OpenCV's `INTER_LINEAR` along one axis (half-pixel centres,
    clamped at the borders)."""
    out = np.zeros((dst, src), np.float32)
    scale = src / dst
    for d in range(dst):
        f = np.float32((d + 0.5) * scale - 0.5)
        s = int(np.floor(f))
        f = np.float32(f - s)
        if s < 0:
            s, f = 0, np.float32(0)
        if s >= src - 1:
            s, f = src - 1, np.float32(0)
        out[d, s] += 1 - f
        if f:
            out[d, s + 1] += f
    return out


def _resize(x: jax.Array, rows: np.ndarray, cols: np.ndarray) -> jax.Array:
    """`x [N, H, W, C]` -> `[N, rows.shape[0], cols.shape[0], C]` by separable weights."""
    hi = jax.lax.Precision.HIGHEST
    x = jnp.einsum("oh,nhwc->nowc", jnp.asarray(rows), x, precision=hi)
    return jnp.einsum("pw,nowc->nopc", jnp.asarray(cols), x, precision=hi)


def pad_rgb(rgba: jax.Array) -> jax.Array:
    """LayerDiffuse's colour padding: `rgba [N, H, W, 4]` in [0, 1] -> RGB `[N, H, W, 3]`.

    Opaque pixels keep their colour; transparent ones take the colour of the nearby
    opaque ones (an alpha-weighted pyramid average); partly transparent ones a mix.
    """
    if rgba.ndim != 4 or rgba.shape[-1] != 4:
        raise InputError(f"pad_rgb expects RGBA [N, H, W, 4], got shape {tuple(rgba.shape)}")
    rgba = rgba.astype(jnp.float32)
    alpha = rgba[..., 3:]
    colours, alphas = [rgba[..., :3] * alpha], [alpha]
    sizes = pyramid_sizes(*rgba.shape[1:3])
    for (h0, w0), (h1, w1) in zip(sizes, sizes[1:]):
        rows, cols = area_weights(h0, h1), area_weights(w0, w1)
        colours.append(_resize(colours[-1], rows, cols))
        alphas.append(_resize(alphas[-1], rows, cols))
    total = jnp.clip(jnp.sum(alphas[-1], axis=(1, 2), keepdims=True), 1e-8, 1e32)
    fg = jnp.sum(colours[-1], axis=(1, 2), keepdims=True) / total  # [N, 1, 1, 3]
    for colour, a in zip(reversed(colours), reversed(alphas)):
        (h0, w0), (h1, w1) = fg.shape[1:3], colour.shape[1:3]
        fg = _resize(fg, linear_weights(h0, h1), linear_weights(w0, w1))
        fg = colour + fg * (1.0 - a)
    return fg
