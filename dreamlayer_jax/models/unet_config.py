"""`UNetConfig`: the diffusers `UNet2DConditionModel` config.json keys this port implements.

Field names are diffusers' keys, with diffusers' defaults. Keys of features that are not
implemented are refused with a `ConfigError` naming them; the per-block resolution of
int-or-list values (including diffusers' naming quirk: without `num_attention_heads`,
`attention_head_dim` is the number of heads) lives in the properties below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dreamlayer_jax.errors import ConfigError
from dreamlayer_jax.models.config_base import ModelConfig

DOWN_BLOCK_TYPES = ("CrossAttnDownBlock2D", "DownBlock2D")
UP_BLOCK_TYPES = ("CrossAttnUpBlock2D", "UpBlock2D")
MID_BLOCK_TYPES = ("UNetMidBlock2DCrossAttn",)

# Keys of unimplemented features that must be absent or hold diffusers' "off" value.
_OFF_ONLY: dict[str, tuple[Any, ...]] = {
    "class_embed_type": (None,),
    "num_class_embeds": (None,),
    "class_embeddings_concat": (False,),
    "dual_cross_attention": (False,),
    "encoder_hid_dim": (None,),
    "encoder_hid_dim_type": (None,),
    "time_embedding_act_fn": (None,),
    "timestep_post_act": (None,),
    "time_cond_proj_dim": (None,),
    "attention_type": ("default",),
    "cross_attention_norm": (None,),
    "mid_block_only_cross_attention": (None, False),
}

Layers = int | tuple[int | tuple[int, ...], ...]


def _fail(key: str, value: Any, why: str) -> ConfigError:
    return ConfigError(f"UNetConfig: {key}={value!r} {why}")


def _per_block(key: str, value: Any, n: int, what: str = "block") -> tuple[Any, ...]:
    """`value` repeated `n` times, or `value` itself if it is a sequence of length `n`."""
    if isinstance(value, tuple):
        if len(value) != n:
            raise _fail(key, value, f"must have one entry per {what} ({n})")
        return value
    return (value,) * n


def _per_resnet(key: str, value: Any, n: int) -> tuple[int, ...]:
    """A block's transformer depths: an int for all `n` resnets, or one int per resnet."""
    values = _per_block(key, value, n, "resnet of the block")
    if not all(isinstance(v, int) and v >= 1 for v in values):
        raise _fail(key, value, "must hold positive integers")
    return values


@dataclass(frozen=True)
class UNetConfig(ModelConfig):
    """Config of Stable Diffusion's `UNet2DConditionModel` (SD 1.x, 2.x, SDXL)."""

    sample_size: int | tuple[int, int] | None = None
    in_channels: int = 4
    out_channels: int = 4
    center_input_sample: bool = False
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    down_block_types: tuple[str, ...] = (
        "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D",
    )
    mid_block_type: str = "UNetMidBlock2DCrossAttn"
    up_block_types: tuple[str, ...] = (
        "UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
    )
    only_cross_attention: bool | tuple[bool, ...] = False
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int | tuple[int, ...] = 2
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    dropout: float = 0.0
    act_fn: str = "silu"
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    cross_attention_dim: int | tuple[int, ...] = 1280
    transformer_layers_per_block: Layers = 1
    reverse_transformer_layers_per_block: tuple[int | tuple[int, ...], ...] | None = None
    attention_head_dim: int | tuple[int, ...] = 8
    num_attention_heads: int | tuple[int, ...] | None = None
    use_linear_projection: bool = False
    addition_embed_type: str | None = None
    addition_time_embed_dim: int | None = None
    projection_class_embeddings_input_dim: int | None = None
    upcast_attention: bool = False
    resnet_time_scale_shift: str = "default"
    time_embedding_type: str = "positional"
    time_embedding_dim: int | None = None
    conv_in_kernel: int = 3
    conv_out_kernel: int = 3

    def __post_init__(self) -> None:
        self._check_supported()
        self._check_shapes()

    def validate(self, raw: dict[str, Any]) -> None:
        for key, allowed in _OFF_ONLY.items():
            self.require(raw, key, allowed, "UNetConfig")

    def _check_supported(self) -> None:
        for key, allowed in (
            ("mid_block_type", MID_BLOCK_TYPES),
            ("act_fn", ("silu", "swish")),
            ("resnet_time_scale_shift", ("default",)),
            ("time_embedding_type", ("positional",)),
            ("addition_embed_type", (None, "text_time")),
            ("dropout", (0, 0.0)),
        ):
            if getattr(self, key) not in allowed:
                raise _fail(key, getattr(self, key), f"is not supported (allowed: {allowed})")
        for key, allowed in (("down_block_types", DOWN_BLOCK_TYPES),
                             ("up_block_types", UP_BLOCK_TYPES)):
            for name in getattr(self, key):
                if name not in allowed:
                    raise _fail(key, name, f"is not supported (allowed: {allowed})")
        if any(_per_block("only_cross_attention", self.only_cross_attention, self.num_blocks)):
            raise _fail("only_cross_attention", self.only_cross_attention, "is not supported")
        if self.addition_embed_type == "text_time":
            for key in ("addition_time_embed_dim", "projection_class_embeddings_input_dim"):
                if not isinstance(getattr(self, key), int):
                    raise _fail(key, getattr(self, key), "must be an int for text_time")
        for key in ("conv_in_kernel", "conv_out_kernel"):
            if getattr(self, key) % 2 != 1:
                raise _fail(key, getattr(self, key), "must be odd")

    def _check_shapes(self) -> None:
        n = self.num_blocks
        if n < 1 or len(self.down_block_types) != n or len(self.up_block_types) != n:
            raise _fail("down_block_types", self.down_block_types,
                        "and up_block_types must both have one entry per block_out_channels")
        if not isinstance(self.norm_num_groups, int) or any(
            c % self.norm_num_groups for c in self.block_out_channels
        ):
            raise _fail("norm_num_groups", self.norm_num_groups,
                        f"must divide every block_out_channels {self.block_out_channels}")
        for channels, heads in zip(self.block_out_channels, self.block_heads):
            if not isinstance(heads, int) or heads < 1 or channels % heads:
                key = "num_attention_heads" if self.num_attention_heads else "attention_head_dim"
                raise _fail(key, heads, f"(heads) must divide the block's {channels} channels")
        self.block_layers  # noqa: B018 - resolving raises on a bad length
        self.block_cross_attention_dims  # noqa: B018
        for i in range(n):
            self.down_transformer_layers(i)
            self.up_transformer_layers(i)

    # Per-block values (down-block order unless said otherwise).

    @property
    def num_blocks(self) -> int:
        return len(self.block_out_channels)

    @property
    def time_embed_dim(self) -> int:
        return self.time_embedding_dim or 4 * self.block_out_channels[0]

    @property
    def block_heads(self) -> tuple[int, ...]:
        """Attention heads per block (head size = channels // heads)."""
        if self.num_attention_heads is not None:
            return _per_block("num_attention_heads", self.num_attention_heads, self.num_blocks)
        return _per_block("attention_head_dim", self.attention_head_dim, self.num_blocks)

    @property
    def block_layers(self) -> tuple[int, ...]:
        """Resnets per down block (the up blocks have one more)."""
        return _per_block("layers_per_block", self.layers_per_block, self.num_blocks)

    @property
    def block_cross_attention_dims(self) -> tuple[int, ...]:
        return _per_block("cross_attention_dim", self.cross_attention_dim, self.num_blocks)

    def down_transformer_layers(self, i: int) -> tuple[int, ...]:
        """Transformer depth after each resnet of down block `i`."""
        key = "transformer_layers_per_block"
        value = _per_block(key, self.transformer_layers_per_block, self.num_blocks)[i]
        return _per_resnet(key, value, self.block_layers[i])

    def up_transformer_layers(self, i: int) -> tuple[int, ...]:
        """Transformer depth after each resnet of up block `i` (deepest block first)."""
        n = self.num_blocks
        if self.reverse_transformer_layers_per_block is None:
            key = "transformer_layers_per_block"
            values = _per_block(key, self.transformer_layers_per_block, n)
            if not all(isinstance(v, int) for v in values):
                raise _fail(key, self.transformer_layers_per_block,
                            "holds per-resnet lists: reverse_transformer_layers_per_block "
                            "must be given too")
            value = values[::-1][i]
        else:
            key = "reverse_transformer_layers_per_block"
            value = _per_block(key, self.reverse_transformer_layers_per_block, n)[i]
        return _per_resnet(key, value, self.block_layers[::-1][i] + 1)

    @property
    def mid_transformer_layers(self) -> int:
        """Transformer depth of the mid block (its single attention)."""
        return self.down_transformer_layers(self.num_blocks - 1)[0]
