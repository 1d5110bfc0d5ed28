"""The UNet's down, mid and up blocks: resnets, optional spatial transformers, resamplers.

All blocks take `x[N, H, W, C]`, the time embedding `temb[N, E]` and the text
`context[N, T, D]` (ignored by the blocks without attention) and pass `layer_ctx`
unchanged to their `Transformer2DModel`s. A down block also returns the skip
activations the matching up block consumes, last one first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from dreamlayer_jax.models.attention import LayerAttentionContext
from dreamlayer_jax.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D
from dreamlayer_jax.models.transformer import Transformer2DModel


@dataclass(frozen=True)
class AttentionSpec:
    """How a block's spatial transformers are built.

    `layers[i]` is the number of transformer blocks after the block's `i`-th resnet.
    """

    layers: tuple[int, ...]
    heads: int
    context_dim: int
    use_linear_projection: bool = False
    upcast_attention: bool = False


def _transformers(
    channels: int, spec: AttentionSpec, groups: int, rngs: nnx.Rngs, dtype: jnp.dtype
) -> nnx.List:
    return nnx.List(
        [
            Transformer2DModel(
                channels, heads=spec.heads, context_dim=spec.context_dim, num_layers=depth,
                groups=groups, use_linear_projection=spec.use_linear_projection,
                upcast_attention=spec.upcast_attention, rngs=rngs, dtype=dtype,
            )
            for depth in spec.layers
        ]
    )


class DownBlock2D(nnx.Module):
    """`num_layers` resnets, then a stride-2 downsampler unless it is the last block."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        *,
        num_layers: int,
        groups: int,
        eps: float,
        add_downsample: bool,
        downsample_padding: int = 1,
        rngs: nnx.Rngs,
        dtype: jnp.dtype = jnp.float32,
    ):
        self.resnets = nnx.List(
            [
                ResnetBlock2D(
                    in_channels if i == 0 else out_channels, out_channels, temb_channels,
                    groups=groups, eps=eps, rngs=rngs, dtype=dtype,
                )
                for i in range(num_layers)
            ]
        )
        self.downsamplers = (
            nnx.List([Downsample2D(out_channels, padding=downsample_padding, rngs=rngs,
                                   dtype=dtype)])
            if add_downsample
            else None
        )

    def _attend(self, i: int, x: jax.Array, context: jax.Array,
                layer_ctx: LayerAttentionContext | None) -> jax.Array:
        return x

    def __call__(
        self,
        x: jax.Array,
        temb: jax.Array,
        context: jax.Array,
        *,
        layer_ctx: LayerAttentionContext | None = None,
    ) -> tuple[jax.Array, tuple[jax.Array, ...]]:
        skips = []
        for i, resnet in enumerate(self.resnets):
            x = self._attend(i, resnet(x, temb), context, layer_ctx)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, tuple(skips)


class CrossAttnDownBlock2D(DownBlock2D):
    """`DownBlock2D` with a `Transformer2DModel` after each resnet."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        *,
        attention: AttentionSpec,
        num_layers: int,
        groups: int,
        eps: float,
        add_downsample: bool,
        downsample_padding: int = 1,
        rngs: nnx.Rngs,
        dtype: jnp.dtype = jnp.float32,
    ):
        super().__init__(
            in_channels, out_channels, temb_channels, num_layers=num_layers, groups=groups,
            eps=eps, add_downsample=add_downsample, downsample_padding=downsample_padding,
            rngs=rngs, dtype=dtype,
        )
        self.attentions = _transformers(out_channels, attention, groups, rngs, dtype)

    def _attend(self, i: int, x: jax.Array, context: jax.Array,
                layer_ctx: LayerAttentionContext | None) -> jax.Array:
        return self.attentions[i](x, context, layer_ctx=layer_ctx)


class UNetMidBlock2DCrossAttn(nnx.Module):
    """resnet, then (transformer, resnet) pairs, at the lowest resolution; channels kept."""

    def __init__(
        self,
        channels: int,
        temb_channels: int,
        *,
        attention: AttentionSpec,
        groups: int,
        eps: float,
        output_scale_factor: float = 1.0,
        rngs: nnx.Rngs,
        dtype: jnp.dtype = jnp.float32,
    ):
        self.attentions = _transformers(channels, attention, groups, rngs, dtype)
        self.resnets = nnx.List(
            [
                ResnetBlock2D(
                    channels, channels, temb_channels, groups=groups, eps=eps,
                    output_scale_factor=output_scale_factor, rngs=rngs, dtype=dtype,
                )
                for _ in range(len(attention.layers) + 1)
            ]
        )

    def __call__(
        self,
        x: jax.Array,
        temb: jax.Array,
        context: jax.Array,
        *,
        layer_ctx: LayerAttentionContext | None = None,
    ) -> jax.Array:
        x = self.resnets[0](x, temb)
        for attention, resnet in zip(self.attentions, list(self.resnets)[1:]):
            x = resnet(attention(x, context, layer_ctx=layer_ctx), temb)
        return x


class UpBlock2D(nnx.Module):
    """`num_layers` resnets, each on `concat(x, skip)`, then a x2 upsampler unless last.

    `prev_channels` is the input's channel count, `skip_channels` that of the down
    block's input (its last skip); the other skips have `out_channels`.
    """

    def __init__(
        self,
        skip_channels: int,
        out_channels: int,
        prev_channels: int,
        temb_channels: int,
        *,
        num_layers: int,
        groups: int,
        eps: float,
        add_upsample: bool,
        rngs: nnx.Rngs,
        dtype: jnp.dtype = jnp.float32,
    ):
        def resnet(i: int) -> ResnetBlock2D:
            x_channels = prev_channels if i == 0 else out_channels
            res_channels = skip_channels if i == num_layers - 1 else out_channels
            return ResnetBlock2D(
                x_channels + res_channels, out_channels, temb_channels, groups=groups, eps=eps,
                rngs=rngs, dtype=dtype,
            )

        self.resnets = nnx.List([resnet(i) for i in range(num_layers)])
        self.upsamplers = (
            nnx.List([Upsample2D(out_channels, rngs=rngs, dtype=dtype)]) if add_upsample else None
        )

    def _attend(self, i: int, x: jax.Array, context: jax.Array,
                layer_ctx: LayerAttentionContext | None) -> jax.Array:
        return x

    def __call__(
        self,
        x: jax.Array,
        temb: jax.Array,
        skips: Sequence[jax.Array],
        context: jax.Array,
        *,
        upsample_size: tuple[int, int] | None = None,
        layer_ctx: LayerAttentionContext | None = None,
    ) -> jax.Array:
        """`skips` are this block's `len(resnets)` skip activations in down-block order."""
        skips = list(skips)
        for i, resnet in enumerate(self.resnets):
            x = jnp.concatenate([x, skips.pop()], axis=-1)
            x = self._attend(i, resnet(x, temb), context, layer_ctx)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, upsample_size)
        return x


class CrossAttnUpBlock2D(UpBlock2D):
    """`UpBlock2D` with a `Transformer2DModel` after each resnet."""

    def __init__(
        self,
        skip_channels: int,
        out_channels: int,
        prev_channels: int,
        temb_channels: int,
        *,
        attention: AttentionSpec,
        num_layers: int,
        groups: int,
        eps: float,
        add_upsample: bool,
        rngs: nnx.Rngs,
        dtype: jnp.dtype = jnp.float32,
    ):
        super().__init__(
            skip_channels, out_channels, prev_channels, temb_channels, num_layers=num_layers,
            groups=groups, eps=eps, add_upsample=add_upsample, rngs=rngs, dtype=dtype,
        )
        self.attentions = _transformers(out_channels, attention, groups, rngs, dtype)

    def _attend(self, i: int, x: jax.Array, context: jax.Array,
                layer_ctx: LayerAttentionContext | None) -> jax.Array:
        return self.attentions[i](x, context, layer_ctx=layer_ctx)
