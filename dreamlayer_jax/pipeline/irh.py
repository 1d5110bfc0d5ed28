"""Information Retained Harmonization (DESIGN.md section 2), as pure functions.

At step `start = round(S * (1 - irh_start))` the global latent is replaced by the
composite of the layer latents; at every later step it is pulled toward the layers'
composite with strength `irh_retain` inside the layers' opacity.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from dreamlayer_jax.attention.context import LayerContext
from dreamlayer_jax.attention.masks import ROLE_FOREGROUND, box_masks_soft
from dreamlayer_jax.codecs.base import Compositor


@struct.dataclass
class IRHSettings:
    """`enabled`, `start` (fraction of the steps, counted from the end), `retain` in [0, 1].

    A pytree of traced values: other settings reuse the compiled sampler.
    """

    enabled: bool | jax.Array = True
    start: float | jax.Array = 0.3
    retain: float | jax.Array = 0.5

    def start_index(self, num_steps: int) -> int | jax.Array:
        """The step count after which the global latent is first replaced (>= 1); a
        Python int for a Python `start`, traced otherwise."""
        if isinstance(self.start, int | float):
            return max(1, int(round(num_steps * (1.0 - self.start))))
        return jnp.maximum(1, jnp.round(num_steps * (1.0 - self.start)))

    def as_arrays(self) -> IRHSettings:
        return IRHSettings(jnp.asarray(self.enabled, bool), jnp.float32(self.start),
                           jnp.float32(self.retain))


def composite_layers(
    compositor: Compositor, latents: jax.Array, ctx: LayerContext
) -> tuple[jax.Array, jax.Array]:
    """Paint the foreground latents over the background latent in slot (paint) order.

    Args:
      latents: `[B, L, h, w, c]` (slot 0 background, `L-1` global, ignored here).
    Returns:
      `(composite [B, h, w, c], coverage [B, h, w, 1])`, where `coverage` is the union
      of the foregrounds' opacities (their latent alpha inside their box, or the box).
    """
    _, num_layers, h, w, _ = latents.shape
    is_fg = (ctx.roles == ROLE_FOREGROUND) & ctx.layer_valid  # [B, L]
    gates = box_masks_soft(ctx.boxes, h, w, ctx.box_margin) * is_fg[..., None, None]
    gates = gates[..., None].astype(latents.dtype)  # [B, L, h, w, 1]
    composite = latents[:, 0]
    clear = jnp.ones_like(gates[:, 0])
    for layer in range(1, num_layers - 1):
        z, gate = latents[:, layer], gates[:, layer]
        composite = compositor.latent_over(composite, z, gate)
        alpha = compositor.latent_alpha(z)
        opacity = gate if alpha is None else gate * alpha
        clear = clear * (1.0 - opacity)
    return composite, 1.0 - clear


def harmonize(
    settings: IRHSettings,
    compositor: Compositor,
    latents: jax.Array,
    ctx: LayerContext,
    steps_done: jax.Array,
    num_steps: int,
) -> jax.Array:
    """Apply IRH to `latents[B, L, h, w, c]` after `steps_done` (traced) denoising steps."""
    start = settings.start_index(num_steps)
    composite, coverage = composite_layers(compositor, latents, ctx)
    g = latents[:, -1]
    pulled = g + settings.retain * coverage * (composite - g)
    new_g = jnp.where(steps_done == start, composite, jnp.where(steps_done > start, pulled, g))
    new_g = jnp.where(settings.enabled, new_g, g)
    return latents.at[:, -1].set(new_g.astype(latents.dtype))
