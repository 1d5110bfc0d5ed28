"""Loading and saving the parts of a DreamLayer model folder.

    model_index.json
    unet/  text_encoder/  tokenizer/  scheduler/       (a Stable Diffusion folder)
    vae/  [transparency_decoder/]                       (codec "latent")
    dreamlayer/config.json, diffusion_pytorch_model.safetensors
        (DreamLayerConfig; role embedding and LoRA adapters; paper variant: the layer
        assign embedding, the context-aware layers and the foreground K/V pairs)

A plain Stable Diffusion folder (no `dreamlayer/`) loads with DreamLayer's defaults: a
zero role embedding and no LoRA, i.e. the pretrained model unchanged.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax.numpy as jnp
from flax import nnx

from dreamlayer_jax.codecs.latent import LatentCodec
from dreamlayer_jax.codecs.layerdiffuse import load_transparency
from dreamlayer_jax.codecs.pixel import PixelCodec
from dreamlayer_jax.errors import ConfigError
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


PAPER_ROOTS = ("layer_assign", "context_layers")
DREAMLAYER_ROOTS = ("role_embedding", *PAPER_ROOTS)


def is_foreground_kv_path(path: tuple[Any, ...]) -> bool:
    """Whether an nnx state path belongs to a paper-variant foreground K/V pair."""
    return any(str(p) in ("to_k_fg", "to_v_fg") for p in path)


def is_dreamlayer_param(path: tuple[Any, ...]) -> bool:
    """DreamLayer's own parameters: the role embedding and LoRA adapters; the paper
    variant's layer assign embedding, context-aware layers and foreground K/V pairs."""
    return (str(path[0]) in DREAMLAYER_ROOTS or is_lora_path(path)
            or is_foreground_kv_path(path))


def load_dreamlayer_unet(folder: Path, dtype: jnp.dtype = jnp.float32,
                         overrides: Mapping[str, Any] | None = None) -> DreamLayerUNet:
    """The base UNet from `unet/` plus DreamLayer's parameters from `dreamlayer/`.

    A plain Stable Diffusion folder gets DreamLayer's defaults, drawn at the base model's
    own resolution (the UNet's `sample_size` times the VAE's downscale: 512 for SD 1.5,
    1024 for SDXL). `overrides` replace fields of the folder's `DreamLayerConfig` (e.g.
    `{"lora_rank": 16, "max_layers": 6}` to fine-tune a plain folder with LoRA). A folder
    without adapters gets fresh ones; one with adapters keeps them, and asking for
    another rank or alpha is a ConfigError. Likewise a box-variant folder loaded as
    `{"variant": "paper"}` gets fresh paper parts (foreground K/V copied from the base);
    the reverse is a ConfigError.
    """
    extra = folder / DREAMLAYER
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", dtype=dtype)
    has_saved = (extra / "config.json").is_file()
    saved = (DreamLayerConfig.from_dict(load_config(extra)) if has_saved
             else DreamLayerConfig(resolution=_native_resolution(folder, unet)))
    config = DreamLayerConfig.from_dict({**saved.__dict__, **(overrides or {})})
    if saved.lora_rank and (config.lora_rank, config.lora_alpha) != (saved.lora_rank,
                                                                     saved.lora_alpha):
        raise ConfigError(f"{folder} has LoRA adapters of rank {saved.lora_rank} (alpha "
                          f"{saved.lora_alpha}); they cannot be changed to rank "
                          f"{config.lora_rank} (alpha {config.lora_alpha})")
    if saved.variant == "paper" and config.variant != "paper":
        raise ConfigError(f"{folder} is a paper-variant DreamLayer model; it cannot be "
                          f"loaded as the {config.variant!r} variant")
    model = DreamLayerUNet(unet, config, rngs=nnx.Rngs(0))
    if has_saved:  # parts the saved model lacks (new adapters, paper parts) start fresh
        update_from_torch(model, load_state_dict(extra), what=f"DreamLayer ({extra})",
                          include=lambda p: is_dreamlayer_param(p) and (
                              saved.lora_rank > 0 or not is_lora_path(p)) and (
                              saved.variant == "paper" or not is_paper_param(p)))
    return model


def is_paper_param(path: tuple[Any, ...]) -> bool:
    """The paper variant's own parameters (absent from a box-variant folder)."""
    return str(path[0]) in PAPER_ROOTS or is_foreground_kv_path(path)


def _native_resolution(folder: Path, unet: UNet2DConditionModel) -> int:
    """Pixels per side the base model was trained at (DreamLayerConfig's default without
    a UNet `sample_size` or a VAE)."""
    size = unet.config.sample_size
    size = size[0] if isinstance(size, tuple) else size
    if not size or not (folder / "vae" / "config.json").is_file():
        return DreamLayerConfig.resolution
    blocks = load_config(folder / "vae").get("block_out_channels", ())
    return int(size) * 2 ** max(len(blocks) - 1, 0)


def load_codec(folder: Path, config: DreamLayerConfig, dtype: jnp.dtype = jnp.float32, *,
               transparency: str | os.PathLike | None = None, augment: bool = False):
    """The model's codec. "latent": its VAE plus a transparency decoder: `transparency`
    (a LayerDiffuse file or converted folder, or one of ours) if given, else the folder's
    `transparency_decoder/` (our own, or LayerDiffuse's by its config's class name);
    `augment` turns on LayerDiffuse's 8-way test-time augmentation."""
    if config.codec == "pixel":
        if transparency is not None:
            raise ConfigError("this model's codec is 'pixel' (RGBA pixels as latents): it "
                              "takes no transparency decoder")
        return PixelCodec(config.pixel_unshuffle)
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", dtype=dtype)
    return LatentCodec(vae, load_transparency(folder, transparency, augment=augment,
                                              dtype=dtype))


def save_dreamlayer_unet(model: DreamLayerUNet, folder: str | os.PathLike) -> None:
    """Write `unet/` (base weights, diffusers names) and `dreamlayer/` (the rest)."""
    folder = Path(folder)
    model.unet.save_pretrained(folder / "unet", include=lambda p: not (
        is_lora_path(p) or is_foreground_kv_path(p)))
    extra = folder / DREAMLAYER
    extra.mkdir(parents=True, exist_ok=True)
    config = {"_class_name": "DreamLayerUNet", **model.config.__dict__}
    (extra / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_state_dict(nnx_state_to_torch(model, include=is_dreamlayer_param), extra)
