"""The layer-axis UNet: Stable Diffusion's UNet run on `[B, L, h, w, c]` with CACA/LSSA.

Convolutions, norms and resnets see layers as extra batch (`[B*L, h, w, c]`); only
attention sees the layer axis, through the `LayerContext` handed to every transformer
block. A learned layer-role embedding (background / foreground / global) is added to
the time embedding; it starts at zero, so a pretrained UNet starts unchanged.

`DreamLayerConfig.variant` picks the mechanisms (DESIGN.md sections 2 and 8):
- "box": region masks from the foregrounds' boxes;
- "paper": a zero-initialised layer assign embedding added to each slot's text, a
  separate K/V pair for the foreground slots (copied from the base), context maps read
  off the global layer's cross-attention in the down path and refined by the
  context-aware layers, all-layer LSSA and the early blend in the up path. Everything
  new starts as the identity or as a copy, so a pretrained UNet starts unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from dreamlayer_jax.attention.context import VARIANTS, LayerContext
from dreamlayer_jax.attention.masks import NUM_ROLES, ROLE_FOREGROUND, box_masks_soft
from dreamlayer_jax.attention.paper import min_max_normalise
from dreamlayer_jax.errors import ConfigError, InputError
from dreamlayer_jax.models.attention import add_foreground_kv
from dreamlayer_jax.models.config_base import ModelConfig
from dreamlayer_jax.models.context_layers import ContextAwareLayers
from dreamlayer_jax.models.lora import apply_lora
from dreamlayer_jax.models.unet import UNet2DConditionModel
from dreamlayer_jax.parallel.layer_attention import METHODS as LAYER_PARALLEL


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
    box_margin: float = 0.05  # dilates the attention and IRH masks (latent cells are coarse)
    # the decoded foreground's alpha is cleared outside its box dilated by this: 0 keeps
    # every layer inside its box, as asked; > 0 lets it spill (a shadow outside the box)
    clear_margin: float = 0.0
    irh_start: float = 0.3
    irh_retain: float = 0.5
    # classifier-free guidance only at timesteps t >= this; below, the conditional
    # prediction alone (guidance 1): a weak model's guided low-noise steps add noise
    guidance_min_timestep: float = 0.0
    attention_backend: str = "auto"  # "auto" | "xla" | "cudnn" | "splash" (attention/backends)
    # the paper variant (DESIGN.md section 8); timesteps in training units (0..999)
    variant: str = "box"  # "box" | "paper"
    context_blocks: tuple[int, ...] = ()  # down blocks read for context maps; () = deepest
    context_layers: int = 2  # N context-aware layers (the paper gives no N)
    context_width: int = 128
    context_heads: int = 4
    blend_until: float = 850.0  # T_G: the early blend while t >= T_G
    irh_restart: float = 600.0  # T_H: IRH re-denoises from here ...
    irh_stop: float = 400.0  # T_H': ... pasting the kept foregrounds until here
    foreground_kv: bool = True  # a separate K/V pair for the foreground slots
    layer_parallel: str = "auto"  # LSSA over a sharded layer axis: "auto" | "allgather" | "ring"

    def validate(self, raw: dict[str, Any]) -> None:
        if self.variant not in VARIANTS:
            raise ConfigError(f"dreamlayer: variant={self.variant!r} must be one of {VARIANTS}")
        if self.layer_parallel not in LAYER_PARALLEL:
            raise ConfigError(f"dreamlayer: layer_parallel={self.layer_parallel!r} must be one "
                              f"of {LAYER_PARALLEL}")
        if self.irh_stop > self.irh_restart:
            raise ConfigError(f"dreamlayer: irh_stop={self.irh_stop} (T_H') must not exceed "
                              f"irh_restart={self.irh_restart} (T_H)")
        if self.context_layers < 0 or self.context_width < 1 or self.context_heads < 1 or (
                self.context_width % self.context_heads):
            raise ConfigError("dreamlayer: context_layers must be >= 0 and context_width a "
                              "positive multiple of context_heads")
        if not 0.0 <= self.guidance_min_timestep < float("inf"):
            raise ConfigError(f"dreamlayer: guidance_min_timestep={self.guidance_min_timestep} "
                              "must be a timestep >= 0")
        if not (0.0 <= self.box_margin < 1.0 and 0.0 <= self.clear_margin < 1.0):
            raise ConfigError(f"dreamlayer: box_margin={self.box_margin} and clear_margin="
                              f"{self.clear_margin} must be fractions of the picture in [0, 1)")
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
    (`role_embedding`, LoRA adapters; paper variant: `layer_assign`, `context_layers`
    and the foreground K/V pairs `...to_k_fg`, `...to_v_fg`) beside them.
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
        self.layer_assign: nnx.Param | None = nnx.data(None)
        self.context_layers: ContextAwareLayers | None = nnx.data(None)
        self.context_blocks: tuple[int, ...] = ()
        if config.variant == "paper":
            text_dim = max(unet.config.block_cross_attention_dims)
            self.layer_assign = nnx.Param(jnp.zeros((config.max_layers, text_dim)))
            self.context_blocks = context_blocks(unet, config.context_blocks)
            hidden_dim = unet.config.block_out_channels[self.context_blocks[0]]
            self.context_layers = ContextAwareLayers(
                hidden_dim, width=config.context_width, depth=config.context_layers,
                heads=config.context_heads, rngs=rngs)
            if config.foreground_kv:
                add_foreground_kv(self.unet)

    def __call__(
        self,
        latents: jax.Array,
        timesteps: jax.Array,
        ctx: LayerContext,
        *,
        return_aux: bool = False,
    ) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
        """Denoise all layers of a batch of scenes at once.

        Args:
          latents: `[B, L, h, w, c]`; `B` sharded over ("data", "fsdp"), `L` over "layer".
          timesteps: scalar, `[B]` or `[B, L]` (layers may sit at different noise levels).
          ctx: the scenes' `LayerContext`: `text [B, L, T, D]` and, for SDXL, `added`
            (`text_embeds [B, L, P]`, `time_ids [B, L, 6]`). Paper variant with CACA:
            also `token_owner` and `own_tokens` (`pipeline.paper_prompts`).
          return_aux: also return the paper variant's maps (empty dict for "box"):
            `context_maps` (refined, `M_G`), `initial_maps` and `own_maps` (`M_F`), each
            `[B, L, hm, wm]`, zero outside the valid foreground slots.
        Returns:
          the UNet's prediction, `[B, L, h, w, c_out]` (and the aux dict).
        """
        b, num_layers = latents.shape[:2]
        if num_layers > self.config.max_layers:
            raise InputError(f"{num_layers} layer slots but the model takes at most "
                             f"{self.config.max_layers} (background + "
                             f"{self.config.max_layers - 2} foregrounds + global)")
        t = jnp.asarray(timesteps)
        t = t[:, None] if t.ndim == 1 else t  # one timestep per scene
        t = jnp.broadcast_to(t, (b, num_layers))
        text = ctx.text
        aux: dict[str, jax.Array] = {}
        after_mid = None
        unet = self.unet
        if self.config.variant == "paper":
            text = text + self._assign_embeddings(num_layers).astype(text.dtype)
            ctx = ctx.replace(variant="paper", blend_until=self.config.blend_until,
                              timesteps=t[:, -1], layer_parallel=self.config.layer_parallel,
                              context_sizes=self._context_sizes(*latents.shape[2:4]))
            if ctx.uses_context_maps:
                if ctx.token_owner is None or ctx.own_tokens is None:
                    raise InputError("the paper variant's CACA needs the LayerContext's "
                                     "token_owner and own_tokens (pipeline.paper_prompts)")

                # The context blocks sow their records into the UNet: a copy made at this
                # trace level (the caller may hold the model outside a scan or a grad).
                unet = nnx.merge(*nnx.split(self.unet))

                def after_mid(c: LayerContext) -> LayerContext:
                    aux.update(self._context_maps(c, _pop_records(unet)))
                    return c.replace(phase="up", context_maps=jnp.clip(aux["context_maps"],
                                                                       0.0, 1.0))
            else:
                ctx = ctx.replace(phase="up")  # no maps to wait for: LSSA in the up path
        n = b * num_layers
        extra = self.role_embedding(ctx.roles.reshape(n))
        added = None
        if ctx.added is not None:
            added = {k: v.reshape(n, *v.shape[2:]) for k, v in ctx.added.items()}
        out = unet(latents.reshape(n, *latents.shape[2:]), t.reshape(n),
                        text.reshape(n, *text.shape[2:]), added, extra_emb=extra,
                        layer_ctx=ctx, after_mid=after_mid)
        out = out.reshape(b, num_layers, *out.shape[1:])
        return (out, aux) if return_aux else out

    def _assign_embeddings(self, num_layers: int) -> jax.Array:
        """`[1, L, 1, D]`: slot `l`'s layer assign embedding (the global slot takes the
        model's last, whatever `L`)."""
        slots = jnp.arange(num_layers).at[-1].set(self.config.max_layers - 1)
        return self.layer_assign[...][slots][None, :, None, :]

    def _context_sizes(self, h: int, w: int) -> tuple[tuple[int, int], ...]:
        """The spatial sizes of the context blocks for latents of `h x w`."""
        sizes, size = [], (h, w)
        for i, block in enumerate(self.unet.down_blocks):
            if i in self.context_blocks:
                sizes.append(size)
            if block.downsamplers is not None:
                size = ((size[0] + 1) // 2, (size[1] + 1) // 2)
        return tuple(sizes)

    def _context_maps(self, ctx: LayerContext, records: list[dict[str, jax.Array]]
                      ) -> dict[str, jax.Array]:
        """Turn what the context blocks recorded into the maps (`return_aux`'s keys)."""
        if not records:
            raise InputError("no context block ran: the latents are too small for the "
                             "model's context_blocks")
        total = {k: sum(r[k] for r in records) for k in records[0]}
        initial = min_max_normalise(total["global_maps"])  # [B, L, hm, wm]
        own = min_max_normalise(total["own_maps"])
        hm, wm = initial.shape[-2:]
        # a foreground without tokens in the global prompt (padding, the unconditional
        # branch) has no context map
        named = (ctx.token_owner[:, None, :] == jnp.arange(ctx.num_layers)[None, :, None])
        is_fg = (ctx.roles == ROLE_FOREGROUND) & ctx.layer_valid & named.any(-1)  # [B, L]
        prior = box_masks_soft(ctx.boxes, hm, wm, ctx.box_margin)  # full box: no-op
        refined = self.context_layers(initial[:, 1:-1], total["global_query"])
        pad = jnp.zeros_like(initial[:, :1])
        refined = jnp.concatenate([pad, refined, pad], axis=1)
        keep = is_fg[..., None, None].astype(jnp.float32)
        return {"context_maps": refined * prior * keep, "initial_maps": initial * keep,
                "own_maps": own * keep}


def context_blocks(unet: UNet2DConditionModel, requested: tuple[int, ...]) -> tuple[int, ...]:
    """The down blocks whose cross-attentions give the context maps; `()` picks the
    deepest down block with cross-attention (SD 1.5 at 512 px: its 16x16 level). All must
    have cross-attention and one channel width."""
    kinds = unet.config.down_block_types
    with_attention = [i for i, kind in enumerate(kinds) if kind.startswith("CrossAttn")]
    if not with_attention:
        raise ConfigError("the paper variant needs a UNet with cross-attention down blocks")
    blocks = tuple(sorted(set(requested))) or (with_attention[-1],)
    bad = [i for i in blocks if i not in with_attention]
    if bad:
        raise ConfigError(f"dreamlayer: context_blocks {bad} are not cross-attention down "
                          f"blocks (those are {with_attention})")
    widths = {unet.config.block_out_channels[i] for i in blocks}
    if len(widths) > 1:
        raise ConfigError(f"dreamlayer: context_blocks {blocks} have different widths "
                          f"{sorted(widths)}; their hidden states are summed")
    return blocks


def _pop_records(module: nnx.Module) -> list[dict[str, jax.Array]]:
    """The context blocks' `MapRecord`s sown during this call, removed from `module`."""
    state = nnx.pop(module, nnx.Intermediate)
    return jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, dict) and "own_maps" in x)
