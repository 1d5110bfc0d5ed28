"""Stable Diffusion's models in flax.nnx (NHWC), loading diffusers-format weights."""

from dreamlayer_jax.models.clip import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
from dreamlayer_jax.models.layer_unet import DreamLayerConfig, DreamLayerUNet
from dreamlayer_jax.models.unet import UNet2DConditionModel
from dreamlayer_jax.models.unet_config import UNetConfig
from dreamlayer_jax.models.vae import AutoencoderKL, VAEConfig

__all__ = [
    "AutoencoderKL",
    "CLIPTextConfig",
    "CLIPTextModel",
    "CLIPTextModelWithProjection",
    "DreamLayerConfig",
    "DreamLayerUNet",
    "UNet2DConditionModel",
    "UNetConfig",
    "VAEConfig",
]
