"""PyTorch references of LayerDiffuse's transparent VAE (for tests and benchmarks).

Reconstructed from LayerDiffuse's `lib_layerdiffusion/models.py`: `UNet1024` built from
diffusers' own blocks (`get_down_block`, `get_up_block`, `UNetMidBlock2D`), the 8-way
`estimate_augmented`, `LatentTransparencyOffsetEncoder`, and `build_alpha_pyramid` /
`pad_rgb` (their OpenCV resizes emulated: area weights as exact interval overlaps,
bilinear as torch's `interpolate(align_corners=False)`, which is OpenCV's INTER_LINEAR
when enlarging). Also the small helpers the LayerDiffuse tests share.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.models.unets.unet_2d_blocks import UNetMidBlock2D, get_down_block, get_up_block
from safetensors.torch import save_file
from torch import nn


def save(state: dict, path: Path, dtype: torch.dtype | None = None) -> Path:
    """A bare state dict as one safetensors file (cast to `dtype` if given)."""
    save_file({k: v.detach().to(dtype or v.dtype).contiguous() for k, v in state.items()},
              str(path))
    return path


def nchw(x: np.ndarray) -> torch.Tensor:
    """`[N, H, W, C]` numpy -> `[N, C, H, W]` torch."""
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def nhwc(x: torch.Tensor) -> np.ndarray:
    """`[N, C, H, W]` torch -> `[N, H, W, C]` numpy."""
    return x.detach().numpy().transpose(0, 2, 3, 1)


def assert_relative(actual, expected, what: str, tol: float = 1e-4) -> None:
    """`max |actual - expected| / max |expected| <= tol`."""
    actual, expected = np.asarray(actual, np.float32), np.asarray(expected, np.float32)
    assert actual.shape == expected.shape, what
    err = float(np.abs(actual - expected).max()) / max(float(np.abs(expected).max()), 1e-6)
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol:.3g}"


DOWN = ("DownBlock2D",) * 4 + ("AttnDownBlock2D",) * 3
UP = ("AttnUpBlock2D",) * 3 + ("UpBlock2D",) * 4
REAL_CHANNELS = (32, 32, 64, 128, 256, 512, 512)


class UNet1024(nn.Module):
    """LayerDiffuse's transparent decoder: `(pixel [N, 3, H, W], latent [N, 4, H/8, W/8])
    -> [N, 4, H, W]` = `[alpha, R, G, B]`."""

    def __init__(self, in_channels: int = 3, out_channels: int = 4,
                 block_out_channels: tuple[int, ...] = REAL_CHANNELS, layers_per_block: int = 2,
                 attention_head_dim: int = 8, norm_num_groups: int = 4, norm_eps: float = 1e-5):
        super().__init__()
        c = block_out_channels
        self.conv_in = nn.Conv2d(in_channels, c[0], kernel_size=3, padding=(1, 1))
        self.latent_conv_in = nn.Conv2d(4, c[2], kernel_size=1)
        self.down_blocks = nn.ModuleList([])
        output_channel = c[0]
        for i, kind in enumerate(DOWN):
            input_channel, output_channel = output_channel, c[i]
            self.down_blocks.append(get_down_block(
                kind, num_layers=layers_per_block, in_channels=input_channel,
                out_channels=output_channel, temb_channels=None,
                add_downsample=i != len(c) - 1, resnet_eps=norm_eps, resnet_act_fn="silu",
                resnet_groups=norm_num_groups, attention_head_dim=attention_head_dim,
                downsample_padding=1, resnet_time_scale_shift="default",
                downsample_type="conv", dropout=0.0))
        self.mid_block = UNetMidBlock2D(
            in_channels=c[-1], temb_channels=None, dropout=0.0, resnet_eps=norm_eps,
            resnet_act_fn="silu", output_scale_factor=1, resnet_time_scale_shift="default",
            attention_head_dim=attention_head_dim, resnet_groups=norm_num_groups,
            attn_groups=norm_num_groups, add_attention=True)
        self.up_blocks = nn.ModuleList([])
        reversed_c = list(reversed(c))
        output_channel = reversed_c[0]
        for i, kind in enumerate(UP):
            prev_output_channel, output_channel = output_channel, reversed_c[i]
            input_channel = reversed_c[min(i + 1, len(c) - 1)]
            self.up_blocks.append(get_up_block(
                kind, num_layers=layers_per_block + 1, in_channels=input_channel,
                out_channels=output_channel, prev_output_channel=prev_output_channel,
                temb_channels=None, add_upsample=i != len(c) - 1, resnet_eps=norm_eps,
                resnet_act_fn="silu", resnet_groups=norm_num_groups,
                attention_head_dim=attention_head_dim, resnet_time_scale_shift="default",
                upsample_type="conv", dropout=0.0))
        self.conv_norm_out = nn.GroupNorm(num_channels=c[0], num_groups=norm_num_groups,
                                          eps=norm_eps)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(c[0], out_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        sample_latent = self.latent_conv_in(latent)
        sample = self.conv_in(x)
        emb = None
        down_block_res_samples = (sample,)
        for i, downsample_block in enumerate(self.down_blocks):
            if i == 3:
                sample = sample + sample_latent
            sample, res_samples = downsample_block(hidden_states=sample, temb=emb)
            down_block_res_samples += res_samples
        sample = self.mid_block(sample, emb)
        for upsample_block in self.up_blocks:
            res_samples = down_block_res_samples[-len(upsample_block.resnets):]
            down_block_res_samples = down_block_res_samples[:-len(upsample_block.resnets)]
            sample = upsample_block(sample, res_samples, emb)
        return self.conv_out(self.conv_act(self.conv_norm_out(sample)))


@torch.no_grad()
def estimate_augmented(model: nn.Module, pixel: torch.Tensor,
                       latent: torch.Tensor) -> torch.Tensor:
    """LayerDiffuse's test-time augmentation: the median over 8 flips/rotations."""
    args = [[False, 0], [False, 1], [False, 2], [False, 3],
            [True, 0], [True, 1], [True, 2], [True, 3]]
    result = []
    for flip, rok in args:
        feed_pixel, feed_latent = pixel.clone(), latent.clone()
        if flip:
            feed_pixel = torch.flip(feed_pixel, dims=(3,))
            feed_latent = torch.flip(feed_latent, dims=(3,))
        feed_pixel = torch.rot90(feed_pixel, k=rok, dims=(2, 3))
        feed_latent = torch.rot90(feed_latent, k=rok, dims=(2, 3))
        eps = model(feed_pixel, feed_latent).clip(0, 1)
        eps = torch.rot90(eps, k=-rok, dims=(2, 3))
        if flip:
            eps = torch.flip(eps, dims=(3,))
        result += [eps]
    return torch.median(torch.stack(result, dim=0), dim=0).values


def offset_encoder() -> nn.Sequential:
    """`LatentTransparencyOffsetEncoder.blocks`."""
    def conv(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
        return nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, stride=stride)

    return nn.Sequential(
        conv(4, 32), nn.SiLU(), conv(32, 32), nn.SiLU(), conv(32, 64, 2), nn.SiLU(),
        conv(64, 64), nn.SiLU(), conv(64, 128, 2), nn.SiLU(), conv(128, 128), nn.SiLU(),
        conv(128, 256, 2), nn.SiLU(), conv(256, 256), nn.SiLU(), conv(256, 4))


def randomise_(model: nn.Module, seed: int, gain: float = 1.0) -> nn.Module:
    """A non-trivial random value in every parameter (norm scales near 1, biases small)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim > 1:
                p.copy_(gain * torch.randn_like(p) / p[0].numel() ** 0.5)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.2 * torch.randn_like(p))
    return model.eval()


def _area_matrix(src: int, dst: int) -> np.ndarray:
    """OpenCV INTER_AREA shrinking as exact overlaps of `[d s, (d + 1) s)` with pixels."""
    s = src / dst
    out = np.zeros((dst, src))
    for d in range(dst):
        lo, hi = d * s, (d + 1) * s
        for i in range(int(np.floor(lo)), min(int(np.ceil(hi)), src)):
            out[d, i] = max(0.0, min(hi, i + 1) - max(lo, i)) / s
    return out


def _area(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """`x [H, W, C]` -> `[h, w, C]` (OpenCV's `cv2.resize(x, (w, h), INTER_AREA)`)."""
    x = np.einsum("oh,hwc->owc", _area_matrix(x.shape[0], h), x)
    return np.einsum("pw,owc->opc", _area_matrix(x.shape[1], w), x)


def _linear(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """`x [H, W, C]` -> `[h, w, C]` (OpenCV's INTER_LINEAR, enlarging)."""
    t = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None].double()
    y = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)
    return y[0].numpy().transpose(1, 2, 0)


def build_alpha_pyramid(color: np.ndarray, alpha: np.ndarray, dk: float = 1.2) -> list:
    pyramid = []
    current_premultiplied_color = color * alpha
    current_alpha = alpha
    while True:
        pyramid.append((current_premultiplied_color, current_alpha))
        height, width, _ = current_alpha.shape
        if min(height, width) == 1:
            break
        size = (int(height / dk), int(width / dk))
        current_premultiplied_color = _area(current_premultiplied_color, *size)
        current_alpha = _area(current_alpha, *size)
    return pyramid[::-1]


def pad_rgb(rgba: np.ndarray) -> np.ndarray:
    """LayerDiffuse's `pad_rgb` on float RGBA `[H, W, 4]` in [0, 1] -> RGB `[H, W, 3]`."""
    rgba = rgba.astype(np.float64)
    pyramid = build_alpha_pyramid(color=rgba[..., :3], alpha=rgba[..., 3:])
    top_c, top_a = pyramid[0]
    fg = np.sum(top_c, axis=(0, 1), keepdims=True) / np.sum(
        top_a, axis=(0, 1), keepdims=True).clip(1e-8, 1e32)
    for layer_c, layer_a in pyramid:
        layer_h, layer_w, _ = layer_c.shape
        fg = _linear(fg, layer_h, layer_w)
        fg = layer_c + fg * (1.0 - layer_a)
    return fg
