"""The layer-axis UNet: Stable Diffusion's UNet run on `[B, L, h, w, c]` with CACA/LSSA.

Convolutions, norms and resnets see layers as extra batch (`[B*L, h, w, c]`); only
attention sees the layer axis, through the `LayerContext` handed to every transformer
block. A learned layer-role embedding (background / foreground / global) is added to
the time embedding; it starts at zero, so a pretrained UNet starts unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from dreamlayer_jax.attention.context import LayerContext
from dreamlayer_jax.attention.masks import NUM_ROLES
from dreamlayer_jax.models.config_base import ModelConfig
from dreamlayer_jax.models.lora import apply_lora
from dreamlayer_jax.models.unet import UNet2DConditionModel


@dataclass(frozen=True)
class DreamLayerConfig(ModelConfig):
    """What DreamLayer adds on top of a base model (stored in the `dreamlayer/` folder).

    `max_layers` is `L_max`: background + foregrounds + global, so a model supports
    `max_layers - 2` foregrounds.
    """

    max_layers: int = 5
    lora_rank: int = 0
    lora_alpha: float = 1.0
    codec: str = "latent"  # "latent" (AutoencoderKL + transparency decoder) or "pixel"
    pixel_unshuffle: int = 1
    resolution: int = 512
    box_margin: float = 0.05
    irh_start: float = 0.3
    irh_retain: float = 0.5
    attention_backend: str = "auto"  # "auto" | "xla" | "cudnn" | "splash" (attention/backends)

    def validate(self, raw: dict[str, Any]) -> None:
        from dreamlayer_jax.errors import ConfigError

        if self.max_layers < 3:
            raise ConfigError(f"dreamlayer: max_layers={self.max_layers} must be >= 3")
        if self.codec not in ("latent", "pixel"):
            raise ConfigError(f"dreamlayer: codec={self.codec!r} must be 'latent' or 'pixel'")
        if self.lora_rank < 0:
            raise ConfigError(f"dreamlayer: lora_rank={self.lora_rank} must be >= 0")
        from dreamlayer_jax.attention.backends import BACKENDS

        if self.attention_backend not in BACKENDS:
            raise ConfigError(f"dreamlayer: attention_backend={self.attention_backend!r} must "
                              f"be one of {list(BACKENDS)}")


class DreamLayerUNet(nnx.Module):
    """`unet(latents[B, L, h, w, c], t, ctx) -> [B, L, h, w, c]`.

    Attributes keep diffusers' names under `unet.` and DreamLayer's own parameters
    (`role_embedding`, LoRA adapters) beside them.
    """

    def __init__(self, unet: UNet2DConditionModel, config: DreamLayerConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.unet = unet
        time_embed_dim = unet.time_embedding.linear_2.out_features
        self.role_embedding = nnx.Embed(
            NUM_ROLES, time_embed_dim, embedding_init=nnx.initializers.zeros, rngs=rngs
        )
        if config.lora_rank > 0:
            apply_lora(self.unet, config.lora_rank, config.lora_alpha, rngs=rngs)

    def __call__(
        self,
        latents: jax.Array,
        timesteps: jax.Array,
        ctx: LayerContext,
    ) -> jax.Array:
        """Denoise all layers of a batch of scenes at once.

        Args:
          latents: `[B, L, h, w, c]`; `B` sharded over ("data", "fsdp"), `L` over "layer".
          timesteps: scalar, `[B]` or `[B, L]` (layers may sit at different noise levels).
          ctx: the scenes' `LayerContext`: `text [B, L, T, D]` and, for SDXL, `added`
            (`text_embeds [B, L, P]`, `time_ids [B, L, 6]`).
        Returns:
          the UNet's prediction, `[B, L, h, w, c_out]`.
        """
        b, num_layers = latents.shape[:2]
        t = jnp.asarray(timesteps)
        t = t[:, None] if t.ndim == 1 else t  # one timestep per scene
        t = jnp.broadcast_to(t, (b, num_layers)).reshape(b * num_layers)
        text = ctx.text.reshape(b * num_layers, *ctx.text.shape[2:])
        extra = self.role_embedding(ctx.roles.reshape(b * num_layers))
        added = None
        if ctx.added is not None:
            added = {k: v.reshape(b * num_layers, *v.shape[2:]) for k, v in ctx.added.items()}
        out = self.unet(
            latents.reshape(b * num_layers, *latents.shape[2:]),
            t,
            text,
            added,
            extra_emb=extra,
            layer_ctx=ctx,
        )
        return out.reshape(b, num_layers, *out.shape[1:])
