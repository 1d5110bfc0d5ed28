"""The codec interface: RGBA pixels <-> the latents the denoiser works on (DESIGN.md s.3)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import jax


@runtime_checkable
class Codec(Protocol):
    """`encode(rgba) -> latent`, `decode(latent) -> rgba`, plus what IRH needs.

    Pixels are float `[N, H, W, 4]` straight (not premultiplied) RGBA in [0, 1];
    latents are `[N, H / downsample, W / downsample, latent_channels]`.
    """

    latent_channels: int
    downsample: int

    def encode(self, rgba: jax.Array, key: jax.Array | None = None) -> jax.Array:
        """`[N, H, W, 4]` in [0, 1] -> latents `[N, h, w, c]`."""
        ...

    def decode(self, latents: jax.Array) -> jax.Array:
        """latents `[N, h, w, c]` -> straight RGBA `[N, H, W, 4]` in [0, 1]."""
        ...

    @property
    def compositor(self) -> Compositor:
        """How layer latents are painted over each other in latent space (for IRH)."""
        ...


@runtime_checkable
class Compositor(Protocol):
    """Latent-space compositing; hashable, so it can be a static argument of `jax.jit`."""

    def latent_alpha(self, latents: jax.Array, signal_scale: float | jax.Array = 1.0
                     ) -> jax.Array | None:
        """A layer's opacity at latent resolution `[N, h, w, 1]` in [0, 1], or None
        when the latent alone does not tell (IRH then uses the region masks).

        `latents` may be a noisy sample `signal_scale * z0 + noise`: the opacity is then
        estimated from `latents / signal_scale` (unbiased before the clip to [0, 1])."""
        ...

    def latent_over(self, under: jax.Array, over: jax.Array, gate: jax.Array) -> jax.Array:
        """Paint the clean layer latent `over` on the clean `under` where `gate[N, h, w, 1]`
        (its region). Noisy samples are blended instead (`pipeline.irh.composite_layers`)."""
        ...


@runtime_checkable
class AlphaDecoder(Protocol):
    """The static half of a codec's alpha decoding, for use inside `jax.jit`: hashable,
    so it can be a static argument; the codec's weights come in as traced `params`
    (`codecs.alpha.split_alpha_decoder` splits a codec into both)."""

    def __call__(self, params: Any, latents: jax.Array) -> jax.Array:
        """latents `[N, h, w, c]` -> the decoded alpha `[N, H, W, 1]` in [0, 1]."""
        ...


@dataclass(frozen=True)
class BlendCompositor:
    """DESIGN.md's latent blend `z <- a z_l + (1 - a) z` with `a` the region mask; for
    latents (such as the VAE's) whose opacity cannot be read off the latent."""

    def latent_alpha(self, latents: jax.Array, signal_scale: float | jax.Array = 1.0) -> None:
        del latents, signal_scale
        return None

    def latent_over(self, under: jax.Array, over: jax.Array, gate: jax.Array) -> jax.Array:
        return gate * over + (1.0 - gate) * under
