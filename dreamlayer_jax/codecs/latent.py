"""`LatentCodec`: Stable Diffusion's `AutoencoderKL` plus a transparency decoder."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dreamlayer_jax.codecs.base import BlendCompositor
from dreamlayer_jax.codecs.layerdiffuse import LayerDiffuseTransparency
from dreamlayer_jax.codecs.transparency import TransparencyDecoder
from dreamlayer_jax.models.vae import AutoencoderKL


class LatentCodec:
    """RGBA <-> scaled VAE latents.

    `encode` gives the VAE latent of the premultiplied RGB, times `scaling_factor`
    (and shifted by `shift_factor` where the VAE has one); `decode` runs the VAE decoder
    and, when a transparency decoder is present, predicts alpha and refined RGB.
    Without one, every decoded pixel is opaque. A `LayerDiffuseTransparency` (mode
    "layerdiffuse", `codecs.layerdiffuse`) brings LayerDiffuse's own conventions instead:
    grey compositing (and its offset encoder) when encoding, unscaled latents into its
    decoder.
    """

    def __init__(self, vae: AutoencoderKL,
                 transparency: TransparencyDecoder | LayerDiffuseTransparency | None = None):
        self.vae = vae
        self.transparency = transparency

    @property
    def transparency_mode(self) -> str:
        """"opaque" (no decoder), "own" (`TransparencyDecoder`) or "layerdiffuse"."""
        if self.transparency is None:
            return "opaque"
        return "layerdiffuse" if isinstance(self.transparency, LayerDiffuseTransparency) else "own"

    @property
    def latent_channels(self) -> int:
        return self.vae.config.latent_channels

    @property
    def downsample(self) -> int:
        return self.vae.config.downscale

    @property
    def compositor(self) -> BlendCompositor:
        return BlendCompositor()

    def _scale(self, z: jax.Array) -> jax.Array:
        shift = self.vae.config.shift_factor or 0.0
        return (z - shift) * self.vae.config.scaling_factor

    def unscale(self, z: jax.Array) -> jax.Array:
        """Scaled latents `[N, h, w, c]` -> the VAE's own (what its decoder gets)."""
        shift = self.vae.config.shift_factor or 0.0
        return z / self.vae.config.scaling_factor + shift

    def encode(self, rgba: jax.Array, key: jax.Array | None = None) -> jax.Array:
        if isinstance(self.transparency, LayerDiffuseTransparency):
            return self._scale(self.transparency.encode(self.vae, rgba, key))
        premultiplied = rgba[..., :3] * rgba[..., 3:]
        posterior = self.vae.encode(premultiplied * 2.0 - 1.0)
        z = posterior.mode() if key is None else posterior.sample(key)
        return self._scale(z)

    def decode_rgb(self, latents: jax.Array) -> jax.Array:
        """The VAE's RGB `[N, H, W, 3]` in [0, 1] (premultiplied for a transparent layer)."""
        return jnp.clip((self.vae.decode(self.unscale(latents)) + 1.0) / 2.0, 0.0, 1.0)

    def decode(self, latents: jax.Array) -> jax.Array:
        rgb = self.decode_rgb(latents)
        if self.transparency is None:
            return jnp.concatenate([rgb, jnp.ones_like(rgb[..., :1])], axis=-1)
        if isinstance(self.transparency, LayerDiffuseTransparency):
            return self.transparency.decode(rgb, self.unscale(latents))
        return self.transparency(latents, rgb)
