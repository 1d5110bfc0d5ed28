"""LayerDiffuse's transparent VAE decoder (`UNet1024`) in flax.nnx (NHWC).

LayerDiffuse (Zhang & Agrawala 2024) decodes a transparent layer from two inputs: the
RGB the ordinary VAE decoder made of a latent, and that latent itself (unscaled: what the
VAE decoder got, not the diffusion latent times `scaling_factor`). Its `UNet1024` is a
diffusers-block UNet without time embedding (blocks in `unet1024_blocks`):

    rgb [N, H, W, 3] in [0, 1] --conv_in--> 7 down blocks --> mid --> 7 up blocks
    latent [N, H/8, W/8, 4] --latent_conv_in (1x1)--> added before down block 3 (H/8)
    --> conv_norm_out, SiLU, conv_out --> [N, H, W, 4] = [alpha, R, G, B]

H and W must be multiples of 64. Attribute names equal the PyTorch state-dict keys, so
LayerDiffuse's bare files (`vae_transparent_decoder.safetensors`,
`layer_sd15_vae_transparent_decoder.safetensors`) load by path with no renaming
(`io.layerdiffuse.load_transparent_decoder`). `__call__` returns **RGBA** (straight RGB,
alpha last, clipped to [0, 1]); `predict` gives the raw `[alpha, R, G, B]` output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from dreamlayer_jax.errors import ConfigError, InputError
from dreamlayer_jax.models.config_base import ModelConfig
from dreamlayer_jax.models.pretrained import PretrainedMixin
from dreamlayer_jax.models.resnet import conv2d, group_norm
from dreamlayer_jax.models.unet1024_blocks import DownBlock, MidBlock, UpBlock

LATENT_CHANNELS = 4
LATENT_BLOCK = 3  # the latent joins before this down block (where the features are at H/8)
AUGMENTATIONS = tuple((flip, k) for flip in (False, True) for k in range(4))
"""The 8 test-time transforms of LayerDiffuse's `estimate_augmented`: an optional
horizontal flip, then `k` counter-clockwise quarter turns."""


@dataclass(frozen=True)
class UNet1024Config(ModelConfig):
    """LayerDiffuse's `UNet1024` config (same keys; defaults are the released files')."""

    in_channels: int = 3
    out_channels: int = 4
    down_block_types: tuple[str, ...] = ("DownBlock2D",) * 4 + ("AttnDownBlock2D",) * 3
    up_block_types: tuple[str, ...] = ("AttnUpBlock2D",) * 3 + ("UpBlock2D",) * 4
    block_out_channels: tuple[int, ...] = (32, 32, 64, 128, 256, 512, 512)
    layers_per_block: int = 2
    attention_head_dim: int = 8
    norm_num_groups: int = 4
    norm_eps: float = 1e-5

    @property
    def multiple(self) -> int:
        """H and W must be multiples of this: `2 ** (number of downsamplers)`."""
        return 2 ** (len(self.block_out_channels) - 1)

    def validate(self, raw: dict[str, Any]) -> None:
        owner = "UNet1024Config"
        n = len(self.block_out_channels)
        if n <= LATENT_BLOCK:
            raise ConfigError(f"{owner}: block_out_channels needs more than {LATENT_BLOCK} "
                              f"entries (the latent joins before down block {LATENT_BLOCK})")
        if len(self.down_block_types) != n or len(self.up_block_types) != n:
            raise ConfigError(f"{owner}: down_block_types and up_block_types need one entry "
                              f"per block_out_channels ({n})")
        for key, allowed in (("down_block_types", ("DownBlock2D", "AttnDownBlock2D")),
                             ("up_block_types", ("UpBlock2D", "AttnUpBlock2D"))):
            for kind in getattr(self, key):
                if kind not in allowed:
                    raise ConfigError(f"{owner}: {key} entry {kind!r} is not supported "
                                      f"(allowed: {allowed})")
        for channels in self.block_out_channels:
            if channels % self.norm_num_groups or channels % self.attention_head_dim:
                raise ConfigError(f"{owner}: block_out_channels entry {channels} must be a "
                                  f"multiple of norm_num_groups={self.norm_num_groups} and "
                                  f"attention_head_dim={self.attention_head_dim}")
        if (self.in_channels, self.out_channels) != (3, 4):
            raise ConfigError(f"{owner}: in_channels/out_channels must be 3/4 (RGB in, "
                              f"[alpha, R, G, B] out), got {self.in_channels}/{self.out_channels}")
        for key, allowed in (("act_fn", ("silu",)), ("downsample_type", ("conv",)),
                             ("upsample_type", ("conv",)), ("downsample_padding", (1,)),
                             ("mid_block_scale_factor", (1, 1.0))):
            self.require(raw, key, allowed, owner)


class TransparentVAEDecoder(PretrainedMixin, nnx.Module):
    """`decoder(rgb [N, H, W, 3] in [0, 1], latent [N, H/8, W/8, 4]) -> RGBA [N, H, W, 4]`.

    `latent` is the unscaled VAE latent the RGB was decoded from. `dtype` is the compute
    dtype (LayerDiffuse's fp16 files load into float32 parameters by default).
    """

    config_class: ClassVar[type[UNet1024Config]] = UNet1024Config
    torch_class_name: ClassVar[str] = "UNet1024"

    def __init__(self, config: UNet1024Config, *, rngs: nnx.Rngs,
                 dtype: jnp.dtype = jnp.float32):
        self.config = config
        self.dtype = dtype
        c, n = config.block_out_channels, len(config.block_out_channels)
        common = dict(groups=config.norm_num_groups, eps=config.norm_eps, rngs=rngs, dtype=dtype)
        head = config.attention_head_dim
        self.conv_in = conv2d(config.in_channels, c[0], 3, rngs=rngs, dtype=dtype)
        self.latent_conv_in = conv2d(LATENT_CHANNELS, c[LATENT_BLOCK - 1], 1, rngs=rngs,
                                     dtype=dtype)
        self.down_blocks = nnx.List([
            DownBlock(c[max(i - 1, 0)], c[i], num_layers=config.layers_per_block,
                      head_dim=head if kind.startswith("Attn") else None,
                      add_downsample=i < n - 1, **common)
            for i, kind in enumerate(config.down_block_types)
        ])
        self.mid_block = MidBlock(c[-1], head_dim=head, **common)
        up_blocks = []
        for i, kind in enumerate(config.up_block_types):
            block = n - 1 - i  # the down block this one mirrors
            up_blocks.append(UpBlock(
                c[max(block - 1, 0)], c[block], c[min(block + 1, n - 1)],
                num_layers=config.layers_per_block + 1,
                head_dim=head if kind.startswith("Attn") else None,
                add_upsample=i < n - 1, **common))
        self.up_blocks = nnx.List(up_blocks)
        self.conv_norm_out = group_norm(c[0], config.norm_num_groups, config.norm_eps,
                                        rngs=rngs, dtype=dtype)
        self.conv_out = conv2d(c[0], config.out_channels, 3, rngs=rngs, dtype=dtype)

    def predict(self, rgb: jax.Array, latent: jax.Array) -> jax.Array:
        """The network's raw output `[N, H, W, out_channels]`: `[alpha, R, G, B]`, unclipped."""
        self._check(rgb, latent)
        x = self.conv_in(rgb.astype(self.dtype))
        injected = self.latent_conv_in(latent.astype(self.dtype))
        skips = [x]
        for i, block in enumerate(self.down_blocks):
            if i == LATENT_BLOCK:
                x = x + injected
            x, block_skips = block(x)
            skips.extend(block_skips)
        x = self.mid_block(x)
        for block in self.up_blocks:
            count = len(block.resnets)
            x = block(x, skips[-count:])
            skips = skips[:-count]
        return self.conv_out(jax.nn.silu(self.conv_norm_out(x)))

    def __call__(self, rgb: jax.Array, latent: jax.Array) -> jax.Array:
        """One pass: straight RGBA `[N, H, W, 4]` in [0, 1] (alpha last)."""
        return to_rgba(jnp.clip(self.predict(rgb, latent), 0.0, 1.0))

    def decode_augmented(self, rgb: jax.Array, latent: jax.Array) -> jax.Array:
        """LayerDiffuse's 8-way test-time augmentation: RGBA `[N, H, W, 4]` in [0, 1].

        Each of the 8 flips/rotations of `(rgb, latent)` is decoded (clipped to [0, 1]) and
        transformed back; the result is the lower median over the 8 (`torch.median`'s,
        i.e. the 4th smallest). The passes run one after the other (`lax.map`), so memory
        stays that of one pass, in two groups of 4 (turned by a quarter turn or not: the
        two shapes of a non-square input).
        """
        self._check(rgb, latent)
        graph, state = nnx.split(self)
        undone = []
        for group in (tuple(a for a in AUGMENTATIONS if a[1] % 2 == odd) for odd in (0, 1)):
            xs = jnp.stack([augment(rgb, flip, k) for flip, k in group])
            zs = jnp.stack([augment(latent, flip, k) for flip, k in group])

            def one(args: tuple[jax.Array, jax.Array]) -> jax.Array:
                return jnp.clip(nnx.merge(graph, state).predict(*args), 0.0, 1.0)

            ys = jax.lax.map(one, (xs, zs))
            undone.extend(unaugment(y, flip, k) for y, (flip, k) in zip(ys, group))
        return to_rgba(lower_median(jnp.stack(undone)))

    def _check(self, rgb: jax.Array, latent: jax.Array) -> None:
        c, m = self.config, self.config.multiple
        if rgb.ndim != 4 or rgb.shape[-1] != c.in_channels:
            raise InputError(f"TransparentVAEDecoder expects rgb [N, H, W, {c.in_channels}], "
                             f"got shape {tuple(rgb.shape)}")
        n, h, w, _ = rgb.shape
        if h % m or w % m:
            raise InputError(f"TransparentVAEDecoder: height and width must be multiples of "
                             f"{m}, got {(h, w)}")
        f = 2 ** (LATENT_BLOCK)
        expected = (n, h // f, w // f, LATENT_CHANNELS)
        if tuple(latent.shape) != expected:
            raise InputError(f"TransparentVAEDecoder expects a latent {list(expected)} for rgb "
                             f"{list(rgb.shape)}, got shape {tuple(latent.shape)}")


def augment(x: jax.Array, flip: bool, k: int) -> jax.Array:
    """`x [N, H, W, C]` flipped left-right (if `flip`), then turned `k` quarter turns
    counter-clockwise (`torch.rot90(k, dims=(2, 3))` on NCHW)."""
    if flip:
        x = jnp.flip(x, axis=2)
    return jnp.rot90(x, k, axes=(1, 2))


def unaugment(x: jax.Array, flip: bool, k: int) -> jax.Array:
    """The inverse of `augment(x, flip, k)`."""
    x = jnp.rot90(x, -k, axes=(1, 2))
    return jnp.flip(x, axis=2) if flip else x


def lower_median(stack: jax.Array) -> jax.Array:
    """`torch.median(stack, dim=0).values`: the lower of the two middle values."""
    return jnp.sort(stack, axis=0)[(stack.shape[0] - 1) // 2]


def to_rgba(alpha_rgb: jax.Array) -> jax.Array:
    """`[..., 4]` from LayerDiffuse's channel order `[alpha, R, G, B]` to `[R, G, B, alpha]`."""
    return jnp.concatenate([alpha_rgb[..., 1:4], alpha_rgb[..., :1]], axis=-1)
