"""Loading and saving the parts of a DreamLayer model folder.

    model_index.json
    unet/  text_encoder/  tokenizer/  scheduler/       (a Stable Diffusion folder)
    vae/  [transparency_decoder/]                       (codec "latent")
    dreamlayer/config.json, diffusion_pytorch_model.safetensors
        (DreamLayerConfig; role embedding and LoRA adapters)

A plain Stable Diffusion folder (no `dreamlayer/`) loads with DreamLayer's defaults: a
zero role embedding and no LoRA, i.e. the pretrained model unchanged.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax.numpy as jnp
from flax import nnx

from dreamlayer_jax.codecs.latent import LatentCodec
from dreamlayer_jax.codecs.pixel import PixelCodec
from dreamlayer_jax.codecs.transparency import TransparencyDecoder
from dreamlayer_jax.io import (
    load_config,
    load_state_dict,
    nnx_state_to_torch,
    save_state_dict,
    update_from_torch,
)
from dreamlayer_jax.models.layer_unet import DreamLayerConfig, DreamLayerUNet
from dreamlayer_jax.models.lora import is_lora_path
from dreamlayer_jax.models.unet import UNet2DConditionModel
from dreamlayer_jax.models.vae import AutoencoderKL

DREAMLAYER = "dreamlayer"


def is_dreamlayer_param(path: tuple[Any, ...]) -> bool:
    """DreamLayer's own parameters: the role embedding and LoRA adapters."""
    return str(path[0]) == "role_embedding" or is_lora_path(path)


def load_dreamlayer_unet(folder: Path, dtype: jnp.dtype = jnp.float32) -> DreamLayerUNet:
    """The base UNet from `unet/` plus DreamLayer's parameters from `dreamlayer/`."""
    extra = folder / DREAMLAYER
    config = (DreamLayerConfig.from_dict(load_config(extra)) if (extra / "config.json").is_file()
              else DreamLayerConfig())
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", dtype=dtype)
    model = DreamLayerUNet(unet, config, rngs=nnx.Rngs(0))
    if (extra / "config.json").is_file():
        update_from_torch(model, load_state_dict(extra), what=f"DreamLayer ({extra})",
                          include=is_dreamlayer_param)
    return model


def load_codec(folder: Path, config: DreamLayerConfig, dtype: jnp.dtype = jnp.float32):
    if config.codec == "pixel":
        return PixelCodec(config.pixel_unshuffle)
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", dtype=dtype)
    transparency = None
    if (folder / "transparency_decoder").is_dir():
        transparency = TransparencyDecoder.from_pretrained(folder, "transparency_decoder")
    return LatentCodec(vae, transparency)


def save_dreamlayer_unet(model: DreamLayerUNet, folder: str | os.PathLike) -> None:
    """Write `unet/` (base weights, diffusers names) and `dreamlayer/` (the rest)."""
    folder = Path(folder)
    model.unet.save_pretrained(folder / "unet", include=lambda p: not is_lora_path(p))
    extra = folder / DREAMLAYER
    extra.mkdir(parents=True, exist_ok=True)
    config = {"_class_name": "DreamLayerUNet", **model.config.__dict__}
    (extra / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_state_dict(nnx_state_to_torch(model, include=is_dreamlayer_param), extra)
