"""The transparency decoder of `LatentCodec`: alpha and refined RGB from a VAE latent.

In the spirit of LayerDiffuse's latent transparency: the VAE encodes the premultiplied
RGB of a layer; this small convolutional network sees the latent (upsampled to pixel
resolution) and the VAE's decoded RGB and predicts the layer's alpha and a refined,
straight RGB. It is stored like any diffusers model (`transparency_decoder/`).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from dreamlayer_jax.models.config_base import ModelConfig
from dreamlayer_jax.models.pretrained import PretrainedMixin


@dataclass(frozen=True)
class TransparencyDecoderConfig(ModelConfig):
    latent_channels: int = 4
    downsample: int = 8
    hidden_channels: int = 32
    num_blocks: int = 2
    norm_num_groups: int = 8


class _Block(nnx.Module):
    def __init__(self, channels: int, groups: int, *, rngs: nnx.Rngs, dtype: jnp.dtype):
        self.norm = nnx.GroupNorm(channels, num_groups=groups, epsilon=1e-6, dtype=dtype,
                                  rngs=rngs)
        self.conv = nnx.Conv(channels, channels, (3, 3), padding=1, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return x + self.conv(nnx.silu(self.norm(x)))


class TransparencyDecoder(PretrainedMixin, nnx.Module):
    """`decoder(latents[N, h, w, c], rgb[N, H, W, 3] in [0, 1]) -> rgba[N, H, W, 4]`."""

    config_class = TransparencyDecoderConfig

    def __init__(self, config: TransparencyDecoderConfig, *, rngs: nnx.Rngs,
                 dtype: jnp.dtype = jnp.float32):
        self.config = config
        c = config.hidden_channels
        self.conv_in = nnx.Conv(config.latent_channels + 3, c, (3, 3), padding=1, dtype=dtype,
                                rngs=rngs)
        self.blocks = nnx.List([_Block(c, config.norm_num_groups, rngs=rngs, dtype=dtype)
                                for _ in range(config.num_blocks)])
        self.conv_out = nnx.Conv(c, 4, (3, 3), padding=1, dtype=dtype, rngs=rngs)

    def __call__(self, latents: jax.Array, rgb: jax.Array) -> jax.Array:
        f = self.config.downsample
        up = jnp.repeat(jnp.repeat(latents, f, axis=1), f, axis=2)
        x = self.conv_in(jnp.concatenate([up.astype(rgb.dtype), rgb * 2.0 - 1.0], axis=-1))
        for block in self.blocks:
            x = block(x)
        out = self.conv_out(nnx.silu(x))
        alpha = jax.nn.sigmoid(out[..., 3:])
        rgb_refined = jnp.clip(rgb + out[..., :3], 0.0, 1.0)
        return jnp.concatenate([rgb_refined, alpha], axis=-1)
