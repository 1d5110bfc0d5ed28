"""Stable Diffusion's denoiser, `UNet2DConditionModel`, in flax.nnx (NHWC).

Loads diffusers-format `unet/` folders (SD 1.x, 2.x, SDXL) through `PretrainedMixin`:
every attribute name equals the PyTorch module name. Called without `extra_emb` and
`layer_ctx` it computes exactly what diffusers' model computes. The two hooks are what
the DreamLayer layer-axis UNet builds on:

- `extra_emb[N, time_embed_dim]` is added to the time embedding (after SDXL's
  `add_embedding`), before any resnet sees it: the learned layer-role embedding.
- `layer_ctx` (a `LayerAttentionContext`) goes to every `Transformer2DModel`, which
  takes its attention kernels from `layer_ctx.attention_fns(h, w)`; `after_mid`, if
  given, replaces it between the mid block and the up path (the paper variant turns
  what the down path recorded into context maps there).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from dreamlayer_jax.errors import InputError
from dreamlayer_jax.models.attention import LayerAttentionContext
from dreamlayer_jax.models.embeddings import TimestepEmbedding, timestep_embedding
from dreamlayer_jax.models.pretrained import PretrainedMixin
from dreamlayer_jax.models.resnet import conv2d, group_norm
from dreamlayer_jax.models.unet_blocks import (
    AttentionSpec,
    CrossAttnDownBlock2D,
    CrossAttnUpBlock2D,
    DownBlock2D,
    UNetMidBlock2DCrossAttn,
    UpBlock2D,
)
from dreamlayer_jax.models.unet_config import UNetConfig

__all__ = ["UNet2DConditionModel", "UNetConfig"]


class UNet2DConditionModel(PretrainedMixin, nnx.Module):
    """The conditional UNet: `(sample[N, H, W, C], t, text[N, T, D]) -> [N, H, W, C_out]`.

    `dtype` is the compute dtype; parameters keep their own (see `from_pretrained`).
    """

    config_class: ClassVar[type[UNetConfig]] = UNetConfig
    torch_class_name: ClassVar[str] = "UNet2DConditionModel"

    def __init__(self, config: UNetConfig, *, rngs: nnx.Rngs, dtype: jnp.dtype = jnp.float32):
        self.config = config
        self.dtype = dtype
        c = config
        channels = c.block_out_channels
        groups, eps, emb_dim = c.norm_num_groups, c.norm_eps, c.time_embed_dim
        common = dict(groups=groups, eps=eps, rngs=rngs, dtype=dtype)

        self.conv_in = conv2d(c.in_channels, channels[0], c.conv_in_kernel, rngs=rngs, dtype=dtype)
        self.time_embedding = TimestepEmbedding(channels[0], emb_dim, rngs=rngs, dtype=dtype)
        self.add_embedding = (
            TimestepEmbedding(c.projection_class_embeddings_input_dim, emb_dim, rngs=rngs,
                              dtype=dtype)
            if c.addition_embed_type == "text_time"
            else None
        )

        def attention(i: int, layers: tuple[int, ...]) -> AttentionSpec:
            return AttentionSpec(
                layers=layers, heads=c.block_heads[i],
                context_dim=c.block_cross_attention_dims[i],
                use_linear_projection=c.use_linear_projection,
                upcast_attention=c.upcast_attention,
            )

        down_blocks = []
        for i, kind in enumerate(c.down_block_types):
            args = (channels[max(i - 1, 0)], channels[i], emb_dim)
            kwargs = dict(num_layers=c.block_layers[i], add_downsample=i < c.num_blocks - 1,
                          downsample_padding=c.downsample_padding, **common)
            if kind == "CrossAttnDownBlock2D":
                kwargs["attention"] = attention(i, c.down_transformer_layers(i))
                down_blocks.append(CrossAttnDownBlock2D(*args, **kwargs))
            else:
                down_blocks.append(DownBlock2D(*args, **kwargs))
        self.down_blocks = nnx.List(down_blocks)

        last = c.num_blocks - 1
        self.mid_block = UNetMidBlock2DCrossAttn(
            channels[-1], emb_dim, attention=attention(last, (c.mid_transformer_layers,)),
            output_scale_factor=c.mid_block_scale_factor, **common,
        )

        up_blocks = []
        for i, kind in enumerate(c.up_block_types):
            block = last - i  # the down block this up block mirrors
            args = (channels[max(block - 1, 0)], channels[block], channels[min(block + 1, last)],
                    emb_dim)
            kwargs = dict(num_layers=c.block_layers[block] + 1, add_upsample=i < last, **common)
            if kind == "CrossAttnUpBlock2D":
                kwargs["attention"] = attention(block, c.up_transformer_layers(i))
                up_blocks.append(CrossAttnUpBlock2D(*args, **kwargs))
            else:
                up_blocks.append(UpBlock2D(*args, **kwargs))
        self.up_blocks = nnx.List(up_blocks)

        self.conv_norm_out = group_norm(channels[0], groups, eps, rngs=rngs, dtype=dtype)
        self.conv_out = conv2d(channels[0], c.out_channels, c.conv_out_kernel, rngs=rngs,
                               dtype=dtype)

    def __call__(
        self,
        sample: jax.Array,
        timesteps: jax.Array | float,
        encoder_hidden_states: jax.Array,
        added_cond_kwargs: Mapping[str, jax.Array] | None = None,
        *,
        extra_emb: jax.Array | None = None,
        layer_ctx: LayerAttentionContext | None = None,
        after_mid: Callable[[LayerAttentionContext], LayerAttentionContext] | None = None,
    ) -> jax.Array:
        """Predict the model output `[N, H, W, out_channels]` for `sample[N, H, W, in_channels]`.

        Args:
          timesteps: `[N]`, `[1]` or a scalar.
          encoder_hidden_states: `[N, T, cross_attention_dim]` text embeddings.
          added_cond_kwargs: SDXL only: `{"text_embeds": [N, P], "time_ids": [N, 6]}`.
          extra_emb: `[N, time_embed_dim]` added to the time embedding.
          layer_ctx: supplies the attention kernels of every transformer block.
          after_mid: `layer_ctx -> layer_ctx` for the up path.
        """
        c = self.config
        self._check_inputs(sample, timesteps, encoder_hidden_states, added_cond_kwargs, extra_emb)
        n, height, width, _ = sample.shape
        x = sample.astype(self.dtype)
        if c.center_input_sample:
            x = 2 * x - 1.0
        context = encoder_hidden_states.astype(self.dtype)

        emb = self.time_embedding(self._time_features(timesteps, n))
        if self.add_embedding is not None:
            emb = emb + self.add_embedding(self._text_time_features(added_cond_kwargs))
        if extra_emb is not None:
            emb = emb + extra_emb.astype(emb.dtype)

        x = self.conv_in(x)
        skips = [x]
        for block in self.down_blocks:
            x, block_skips = block(x, emb, context, layer_ctx=layer_ctx)
            skips.extend(block_skips)
        x = self.mid_block(x, emb, context, layer_ctx=layer_ctx)
        if after_mid is not None:
            layer_ctx = after_mid(layer_ctx)

        # Sizes that don't halve evenly all the way down are restored exactly on the way up.
        factor = 2 ** (c.num_blocks - 1)
        exact_sizes = height % factor != 0 or width % factor != 0
        for i, block in enumerate(self.up_blocks):
            count = len(block.resnets)
            block_skips, skips = skips[-count:], skips[:-count]
            size = skips[-1].shape[1:3] if exact_sizes and i < c.num_blocks - 1 else None
            x = block(x, emb, block_skips, context, upsample_size=size, layer_ctx=layer_ctx)

        x = jax.nn.silu(self.conv_norm_out(x))
        return self.conv_out(x)

    def _time_features(self, timesteps: jax.Array | float, n: int) -> jax.Array:
        """`[N, block_out_channels[0]]` sinusoidal features of the timesteps."""
        t = jnp.broadcast_to(jnp.reshape(timesteps, (-1,)), (n,))
        features = timestep_embedding(
            t, self.config.block_out_channels[0], flip_sin_to_cos=self.config.flip_sin_to_cos,
            freq_shift=self.config.freq_shift,
        )
        return features.astype(self.dtype)

    def _text_time_features(self, added_cond_kwargs: Mapping[str, jax.Array]) -> jax.Array:
        """SDXL's `[N, projection_class_embeddings_input_dim]`: pooled text + size features."""
        c = self.config
        text, time_ids = added_cond_kwargs["text_embeds"], added_cond_kwargs["time_ids"]
        time_features = timestep_embedding(
            time_ids.reshape(-1), c.addition_time_embed_dim, flip_sin_to_cos=c.flip_sin_to_cos,
            freq_shift=c.freq_shift,
        ).reshape(text.shape[0], -1)
        features = jnp.concatenate([text.astype(jnp.float32), time_features], axis=-1)
        return features.astype(self.dtype)

    def _check_inputs(
        self,
        sample: jax.Array,
        timesteps: jax.Array | float,
        context: jax.Array,
        added_cond_kwargs: Mapping[str, jax.Array] | None,
        extra_emb: jax.Array | None,
    ) -> None:
        """Raise `InputError` for inputs whose shapes don't fit (static, so free under jit)."""
        c = self.config
        if sample.ndim != 4 or sample.shape[-1] != c.in_channels:
            raise InputError(f"sample must be [N, H, W, {c.in_channels}], got {sample.shape}")
        n = sample.shape[0]
        if jnp.ndim(timesteps) > 1 or jnp.size(timesteps) not in (1, n):
            raise InputError(f"timesteps must be a scalar, [1] or [{n}], "
                             f"got shape {jnp.shape(timesteps)}")
        dims = set(c.block_cross_attention_dims)
        if context.ndim != 3 or context.shape[0] != n or context.shape[-1] not in dims:
            raise InputError(f"encoder_hidden_states must be [{n}, T, {max(dims)}], "
                             f"got {context.shape}")
        if extra_emb is not None and extra_emb.shape != (n, c.time_embed_dim):
            raise InputError(f"extra_emb must be [{n}, {c.time_embed_dim}], got {extra_emb.shape}")
        if c.addition_embed_type == "text_time":
            self._check_text_time(added_cond_kwargs, n)

    def _check_text_time(self, added_cond_kwargs: Mapping[str, jax.Array] | None, n: int) -> None:
        expected = self.config.projection_class_embeddings_input_dim
        kwargs = added_cond_kwargs or {}
        missing = [k for k in ("text_embeds", "time_ids") if k not in kwargs]
        if missing:
            raise InputError(f"this UNet (addition_embed_type='text_time') needs "
                             f"added_cond_kwargs with {missing}")
        text, time_ids = kwargs["text_embeds"], kwargs["time_ids"]
        if text.ndim != 2 or time_ids.ndim != 2 or text.shape[0] != n or time_ids.shape[0] != n:
            raise InputError(f"text_embeds and time_ids must be [{n}, P] and [{n}, K], got "
                             f"{text.shape} and {time_ids.shape}")
        width = text.shape[1] + time_ids.shape[1] * self.config.addition_time_embed_dim
        if width != expected:
            raise InputError(f"text_embeds {text.shape} and time_ids {time_ids.shape} give "
                             f"{width} features, the UNet expects {expected}")
