"""`PixelCodec`: the latent is the premultiplied RGBA picture in [-1, 1].

With `unshuffle = f > 1` each `f x f` block of pixels becomes one latent pixel with
`4 * f * f` channels ordered `(dy, dx, rgba)`, so the denoiser runs at `1/f` resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp


def pixel_unshuffle(x: jax.Array, factor: int) -> jax.Array:
    """`[N, H, W, C] -> [N, H/f, W/f, f*f*C]`, channels ordered `(dy, dx, c)`."""
    if factor == 1:
        return x
    n, h, w, c = x.shape
    x = x.reshape(n, h // factor, factor, w // factor, factor, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(n, h // factor, w // factor, factor**2 * c)


def pixel_shuffle(x: jax.Array, factor: int) -> jax.Array:
    """Inverse of `pixel_unshuffle`: `[N, h, w, f*f*C] -> [N, h*f, w*f, C]`."""
    if factor == 1:
        return x
    n, h, w, fc = x.shape
    c = fc // factor**2
    x = x.reshape(n, h, w, factor, factor, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, h * factor, w * factor, c)


@dataclass(frozen=True)
class PixelCodec:
    """RGBA premultiplied, scaled to [-1, 1], optionally pixel-unshuffled by `unshuffle`."""

    unshuffle: int = 1

    @property
    def latent_channels(self) -> int:
        return 4 * self.unshuffle**2

    @property
    def downsample(self) -> int:
        return self.unshuffle

    def encode(self, rgba: jax.Array, key: jax.Array | None = None) -> jax.Array:
        del key  # deterministic
        alpha = rgba[..., 3:]
        premultiplied = jnp.concatenate([rgba[..., :3] * alpha, alpha], axis=-1)
        return pixel_unshuffle(premultiplied * 2.0 - 1.0, self.unshuffle)

    def _premultiplied(self, latents: jax.Array) -> jax.Array:
        """Valid premultiplied RGBA `[N, H, W, 4]`: alpha in [0, 1] and rgb in [0, alpha]."""
        p = jnp.clip((pixel_shuffle(latents, self.unshuffle) + 1.0) / 2.0, 0.0, 1.0)
        alpha = p[..., 3:]
        return jnp.concatenate([jnp.minimum(p[..., :3], alpha), alpha], axis=-1)

    def decode(self, latents: jax.Array) -> jax.Array:
        p = self._premultiplied(latents)
        alpha = p[..., 3:]
        rgb = jnp.where(alpha > 1e-3, p[..., :3] / jnp.maximum(alpha, 1e-3), 0.0)
        return jnp.concatenate([jnp.clip(rgb, 0.0, 1.0), alpha], axis=-1)

    @property
    def compositor(self) -> PixelCodec:
        return self

    def latent_alpha(self, latents: jax.Array, signal_scale: float | jax.Array = 1.0
                     ) -> jax.Array:
        """The mean alpha of each latent cell's `f x f` pixels, `[N, h, w, 1]`, read from
        `latents / signal_scale` and averaged before the clip to [0, 1] (a noisy sample's
        estimate is then unbiased wherever the true alpha is inside (0, 1))."""
        alpha = (pixel_shuffle(latents, self.unshuffle)[..., 3:] / signal_scale + 1.0) / 2.0
        n, h, w, _ = latents.shape
        f = self.unshuffle
        return jnp.clip(alpha.reshape(n, h, f, w, f, 1).mean(axis=(2, 4)), 0.0, 1.0)

    def latent_over(self, under: jax.Array, over: jax.Array, gate: jax.Array) -> jax.Array:
        """Exact premultiplied "over" per pixel: `p = p_over + (1 - a_over) p_under`.

        `gate[N, h, w, 1]` limits where the layer is painted (1 = fully, e.g. inside its
        box); the layer's own per-pixel opacity comes from its alpha channel.
        """
        f = self.unshuffle
        p_under = self._premultiplied(under)
        p_over = self._premultiplied(over)
        painted = p_over + (1.0 - p_over[..., 3:]) * p_under
        gate = jnp.repeat(jnp.repeat(gate, f, axis=1), f, axis=2)
        mixed = gate * painted + (1.0 - gate) * p_under
        return pixel_unshuffle(mixed * 2.0 - 1.0, f)
