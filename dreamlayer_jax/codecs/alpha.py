"""A codec's alpha decoding split for `jax.jit`: a static function and traced parameters.

The paper form of IRH (`pipeline.irh`) decodes the foregrounds' alphas inside the one
jitted sampler. A codec with weights (the VAE, a transparency decoder) must not be closed
over there: its parameters would become constants of the compiled program. So a codec is
split, once per call, into

- an `AlphaDecoder`: hashable (a static argument of `jax.jit`; equal for the same codec
  structure, so the sampler does not recompile), called as `decoder(params, latents)`;
- `params`: the pytree of arrays it needs (None for the pixel codec), a traced argument.

`split_alpha_decoder(codec)` does it for `PixelCodec` and `LatentCodec`; another codec can
provide its own `split_alpha_decoder()` method. `latent_alphas` decodes and area-averages
the alpha to latent resolution.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from dreamlayer_jax.codecs.base import AlphaDecoder
from dreamlayer_jax.codecs.latent import LatentCodec
from dreamlayer_jax.codecs.pixel import PixelCodec


@dataclass(frozen=True)
class PixelAlpha:
    """`PixelCodec`'s alpha: read off the latent itself (no parameters)."""

    codec: PixelCodec

    def __call__(self, params: None, latents: jax.Array) -> jax.Array:
        del params
        return self.codec.decode(latents)[..., 3:]


@dataclass(frozen=True)
class LatentAlpha:
    """`LatentCodec`'s alpha: the VAE decoder and the transparency decoder, rebuilt from
    `params = nnx.state((vae, transparency))` inside the traced function."""

    graphdef: nnx.GraphDef

    def __call__(self, params: nnx.State, latents: jax.Array) -> jax.Array:
        vae, transparency = nnx.merge(self.graphdef, params)
        return LatentCodec(vae, transparency).decode(latents)[..., 3:]


@dataclass(frozen=True)
class OpaqueAlpha:
    """A codec without a transparency decoder: every pixel is opaque (alpha 1), which is
    what its `decode` returns; no decoding is run. The paper form of IRH then pastes the
    last foreground over the whole global latent: give such a model a transparency
    decoder to use it."""

    downsample: int

    def __call__(self, params: None, latents: jax.Array) -> jax.Array:
        del params
        n, h, w, _ = latents.shape
        return jnp.ones((n, h * self.downsample, w * self.downsample, 1), jnp.float32)


def split_alpha_decoder(codec: Any) -> tuple[AlphaDecoder, Any]:
    """`(decoder, params)` for `codec` (see the module docstring)."""
    own = getattr(codec, "split_alpha_decoder", None)
    if own is not None:
        return own()
    if isinstance(codec, PixelCodec):
        return PixelAlpha(codec), None
    if isinstance(codec, LatentCodec):
        if codec.transparency is None:
            return OpaqueAlpha(codec.downsample), None
        graphdef, params = nnx.split((codec.vae, codec.transparency))
        return LatentAlpha(graphdef), params
    raise TypeError(f"{type(codec).__name__} has no alpha decoder: give it a "
                    "split_alpha_decoder() method (codecs.alpha)")


def area_average(alpha: jax.Array, h: int, w: int) -> jax.Array:
    """`alpha[N, H, W, 1]` averaged over blocks to `[N, h, w, 1]` (`H, W` multiples of
    `h, w`)."""
    n, big_h, big_w, c = alpha.shape
    blocks = alpha.reshape(n, h, big_h // h, w, big_w // w, c)
    return blocks.astype(jnp.float32).mean(axis=(2, 4))


def latent_alphas(decoder: AlphaDecoder, params: Any, latents: jax.Array) -> jax.Array:
    """Decoded alpha of `latents[N, h, w, c]` at latent size, `float32[N, h, w, 1]` in
    [0, 1] (traceable: use it inside a jitted function)."""
    _, h, w, _ = latents.shape
    return jnp.clip(area_average(decoder(params, latents), h, w), 0.0, 1.0)


@partial(jax.jit, static_argnums=0)
def decode_alphas(decoder: AlphaDecoder, params: Any, latents: jax.Array) -> jax.Array:
    """`latent_alphas`, jitted, for host-side callers (the paper variant's editing)."""
    return latent_alphas(decoder, params, latents)
