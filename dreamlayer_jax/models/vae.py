"""Stable Diffusion's `AutoencoderKL` in flax.nnx (NHWC), loading diffusers' VAE folders.

Images are `[N, H, W, in_channels]` in `[-1, 1]`; latents are `[N, H / f, W / f,
latent_channels]` with `f = 2 ** (len(block_out_channels) - 1)`. The latent scaling
(`config.scaling_factor`, `config.shift_factor`) is applied by callers, as in diffusers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from dreamlayer_jax.errors import ConfigError, InputError
from dreamlayer_jax.models.config_base import ModelConfig
from dreamlayer_jax.models.pretrained import PretrainedMixin
from dreamlayer_jax.models.vae_blocks import (
    DownEncoderBlock,
    UpDecoderBlock,
    VAEMidBlock,
    activation,
    conv1x1,
    conv3x3,
    group_norm,
)

LOGVAR_RANGE = (-30.0, 20.0)  # diffusers clamps the posterior's log-variance to this range


@dataclass(frozen=True)
class VAEConfig(ModelConfig):
    """diffusers' `AutoencoderKL` config (same keys as its config.json)."""

    in_channels: int = 3
    out_channels: int = 3
    down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",)
    up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",)
    block_out_channels: tuple[int, ...] = (64,)
    layers_per_block: int = 1
    act_fn: str = "silu"
    latent_channels: int = 4
    norm_num_groups: int = 32
    sample_size: int | tuple[int, ...] = 32
    scaling_factor: float = 0.18215
    shift_factor: float | None = None
    latents_mean: tuple[float, ...] | None = None
    latents_std: tuple[float, ...] | None = None
    force_upcast: bool = True
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True

    @property
    def downscale(self) -> int:
        """The spatial factor between images and latents."""
        return 2 ** (len(self.block_out_channels) - 1)

    def validate(self, raw: dict[str, Any]) -> None:
        owner = "VAEConfig"
        n = len(self.block_out_channels)
        if n == 0:
            raise ConfigError(f"{owner}: block_out_channels must not be empty")
        if len(self.down_block_types) != n or len(self.up_block_types) != n:
            raise ConfigError(
                f"{owner}: down_block_types and up_block_types need one entry per "
                f"block_out_channels ({n}), got {len(self.down_block_types)} and "
                f"{len(self.up_block_types)}"
            )
        for key, allowed in (("down_block_types", "DownEncoderBlock2D"),
                             ("up_block_types", "UpDecoderBlock2D")):
            for kind in getattr(self, key):
                if kind != allowed:
                    raise ConfigError(f"{owner}: {key} entry {kind!r} is not supported "
                                      f"(allowed: {allowed!r})")
        for channels in self.block_out_channels:
            if channels % self.norm_num_groups:
                raise ConfigError(f"{owner}: norm_num_groups={self.norm_num_groups} does not "
                                  f"divide block_out_channels entry {channels}")
        if self.layers_per_block < 1:
            raise ConfigError(f"{owner}: layers_per_block must be >= 1")
        activation(self.act_fn)  # raises ConfigError for an unknown activation


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class DiagonalGaussian:
    """The VAE posterior `N(mean, exp(logvar))`, both `[N, h, w, latent_channels]`."""

    mean: jax.Array
    logvar: jax.Array

    @classmethod
    def from_moments(cls, moments: jax.Array) -> DiagonalGaussian:
        """Split `[..., 2 * C]` into mean and (clamped) log-variance, as diffusers does."""
        mean, logvar = jnp.split(moments, 2, axis=-1)
        return cls(mean=mean, logvar=jnp.clip(logvar, *LOGVAR_RANGE))

    @property
    def std(self) -> jax.Array:
        return jnp.exp(0.5 * self.logvar)

    @property
    def var(self) -> jax.Array:
        return jnp.exp(self.logvar)

    def sample(self, key: jax.Array) -> jax.Array:
        """A draw `mean + std * eps`, `eps ~ N(0, 1)` from `key` (same key, same draw)."""
        eps = jax.random.normal(key, self.mean.shape, dtype=self.mean.dtype)
        return self.mean + self.std * eps

    def mode(self) -> jax.Array:
        return self.mean

    def kl(self) -> jax.Array:
        """`KL(self || N(0, 1))` summed over each sample's elements: `[N]`."""
        terms = jnp.square(self.mean) + self.var - 1.0 - self.logvar
        return 0.5 * jnp.sum(terms, axis=tuple(range(1, terms.ndim)))


class Encoder(nnx.Module):
    """Image `[N, H, W, in_channels]` -> moments `[N, H / f, W / f, 2 * latent_channels]`."""

    def __init__(self, config: VAEConfig, *, rngs: nnx.Rngs, dtype: jnp.dtype = jnp.float32):
        channels, groups, act_fn = config.block_out_channels, config.norm_num_groups, config.act_fn
        self.act = activation(act_fn)
        self.conv_in = conv3x3(config.in_channels, channels[0], rngs=rngs, dtype=dtype)
        self.down_blocks = nnx.List([
            DownEncoderBlock(channels[max(i - 1, 0)], c_out, config.layers_per_block, groups,
                             act_fn, add_downsample=i < len(channels) - 1, rngs=rngs, dtype=dtype)
            for i, c_out in enumerate(channels)
        ])
        self.mid_block = VAEMidBlock(channels[-1], groups, act_fn,
                                     config.mid_block_add_attention, rngs=rngs, dtype=dtype)
        self.conv_norm_out = group_norm(channels[-1], groups, rngs=rngs, dtype=dtype)
        self.conv_out = conv3x3(channels[-1], 2 * config.latent_channels, rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(self.act(self.conv_norm_out(x)))


class Decoder(nnx.Module):
    """Latent `[N, h, w, latent_channels]` -> image `[N, h * f, w * f, out_channels]`."""

    def __init__(self, config: VAEConfig, *, rngs: nnx.Rngs, dtype: jnp.dtype = jnp.float32):
        channels, groups, act_fn = config.block_out_channels, config.norm_num_groups, config.act_fn
        reversed_channels = tuple(reversed(channels))
        self.act = activation(act_fn)
        self.conv_in = conv3x3(config.latent_channels, channels[-1], rngs=rngs, dtype=dtype)
        self.mid_block = VAEMidBlock(channels[-1], groups, act_fn,
                                     config.mid_block_add_attention, rngs=rngs, dtype=dtype)
        self.up_blocks = nnx.List([
            UpDecoderBlock(reversed_channels[max(i - 1, 0)], c_out, config.layers_per_block + 1,
                           groups, act_fn, add_upsample=i < len(channels) - 1, rngs=rngs,
                           dtype=dtype)
            for i, c_out in enumerate(reversed_channels)
        ])
        self.conv_norm_out = group_norm(channels[0], groups, rngs=rngs, dtype=dtype)
        self.conv_out = conv3x3(channels[0], config.out_channels, rngs=rngs, dtype=dtype)

    def __call__(self, z: jax.Array) -> jax.Array:
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(self.act(self.conv_norm_out(x)))


class AutoencoderKL(PretrainedMixin, nnx.Module):
    """diffusers' `AutoencoderKL` (NHWC). `dtype` is the compute dtype.

    `encode(x)` gives the posterior, `decode(z)` the image; neither applies
    `config.scaling_factor` (callers multiply latents by it after encoding and divide
    before decoding, as diffusers pipelines do).
    """

    config_class: ClassVar[type[VAEConfig]] = VAEConfig
    torch_class_name: ClassVar[str] = "AutoencoderKL"

    def __init__(self, config: VAEConfig, *, rngs: nnx.Rngs, dtype: jnp.dtype = jnp.float32):
        self.config = config
        self.dtype = dtype
        latent = config.latent_channels
        self.encoder = Encoder(config, rngs=rngs, dtype=dtype)
        self.decoder = Decoder(config, rngs=rngs, dtype=dtype)
        self.quant_conv = (conv1x1(2 * latent, 2 * latent, rngs=rngs, dtype=dtype)
                           if config.use_quant_conv else None)
        self.post_quant_conv = (conv1x1(latent, latent, rngs=rngs, dtype=dtype)
                                if config.use_post_quant_conv else None)

    def encode(self, x: jax.Array) -> DiagonalGaussian:
        """`x [N, H, W, in_channels]` (H, W multiples of `config.downscale`) -> posterior."""
        self._check_spatial(x, self.config.in_channels, "image")
        moments = self.encoder(x.astype(self.dtype))
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        return DiagonalGaussian.from_moments(moments)

    def decode(self, z: jax.Array) -> jax.Array:
        """`z [N, h, w, latent_channels]` -> image `[N, h * f, w * f, out_channels]`."""
        self._check_spatial(z, self.config.latent_channels, "latent", multiple=1)
        z = z.astype(self.dtype)
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def __call__(self, x: jax.Array, key: jax.Array | None = None) -> jax.Array:
        """Reconstruct `x`: decode a posterior sample drawn with `key`, or its mode."""
        posterior = self.encode(x)
        z = posterior.sample(key) if key is not None else posterior.mode()
        return self.decode(z)

    def _check_spatial(self, x: jax.Array, channels: int, what: str,
                       multiple: int | None = None) -> None:
        multiple = self.config.downscale if multiple is None else multiple
        if x.ndim != 4 or x.shape[-1] != channels:
            raise InputError(f"AutoencoderKL expects an {what} [N, H, W, {channels}], "
                             f"got shape {tuple(x.shape)}")
        if x.shape[1] % multiple or x.shape[2] % multiple:
            raise InputError(f"AutoencoderKL {what} height and width must be multiples of "
                             f"{multiple}, got {tuple(x.shape[1:3])}")
