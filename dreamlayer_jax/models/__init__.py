"""Stable Diffusion's models in flax.nnx (NHWC), loading diffusers-format weights.

The layer-axis `DreamLayerUNet` lives in `models.layer_unet` (it builds on `attention`).
"""

from dreamlayer_jax.models.clip import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
from dreamlayer_jax.models.unet import UNet2DConditionModel
from dreamlayer_jax.models.unet_config import UNetConfig
from dreamlayer_jax.models.vae import AutoencoderKL, VAEConfig

__all__ = [
    "AutoencoderKL",
    "CLIPTextConfig",
    "CLIPTextModel",
    "CLIPTextModelWithProjection",
    "UNet2DConditionModel",
    "UNetConfig",
    "VAEConfig",
]
