"""Creating a new, randomly initialised DreamLayer model folder (to train from scratch)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from flax import nnx

from dreamlayer_jax.errors import ConfigError
from dreamlayer_jax.models.clip import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
from dreamlayer_jax.models.layer_unet import DreamLayerConfig, DreamLayerUNet
from dreamlayer_jax.models.tokenizer import write_word_tokenizer
from dreamlayer_jax.models.unet import UNet2DConditionModel
from dreamlayer_jax.models.unet_config import UNetConfig
from dreamlayer_jax.pipeline.components import save_dreamlayer_unet
from dreamlayer_jax.schedulers.factory import save_scheduler, scheduler_from_config


def create_model_folder(
    folder: str | os.PathLike,
    *,
    unet: Mapping[str, Any],
    text_encoder: Mapping[str, Any],
    words: Iterable[str],
    dreamlayer: Mapping[str, Any],
    scheduler: Mapping[str, Any],
    text_encoder_2: Mapping[str, Any] | None = None,
    vae: str | os.PathLike | Mapping[str, Any] | None = None,
    transparency: str | os.PathLike | Mapping[str, Any] | None = None,
    seed: int = 0,
) -> Path:
    """Write a complete model folder with random weights.

    The codec is `dreamlayer["codec"]`'s: "pixel" needs nothing more; "latent" reads
    `vae` (else the caller writes `vae/` itself): a trained VAE folder (copied to `vae/`,
    e.g. `training.vae.train_vae`'s) or a dict of `VAEConfig` fields (random weights).
    `transparency` (latent codec only) adds `transparency_decoder/`: a trained decoder's
    folder (copied) or a dict of `UNet1024Config` fields (a fresh LayerDiffuse decoder,
    `training.transparency.fresh_decoder`); without it every decoded pixel is opaque and
    layers encode premultiplied.

    `words` is the closed vocabulary the tokenizer keeps as whole tokens; the text
    encoder's `vocab_size` and `max_position_embeddings` follow the tokenizer. With
    `text_encoder_2` (a config with `projection_dim`) the model is SDXL-style: a second,
    projecting encoder and tokenizer, for a UNet with `addition_embed_type="text_time"`.
    """
    folder = Path(folder)
    dl_config = DreamLayerConfig.from_dict(dict(dreamlayer))
    if dl_config.codec == "pixel" and (vae is not None or transparency is not None):
        raise ConfigError("create_model_folder: the pixel codec takes no vae or "
                          "transparency decoder")
    if transparency is not None and vae is None:
        raise ConfigError("create_model_folder: a transparency decoder needs a vae")
    rngs = nnx.Rngs(seed)
    encoders = [("", CLIPTextModel, text_encoder)]
    if text_encoder_2 is not None:
        encoders.append(("_2", CLIPTextModelWithProjection, text_encoder_2))
    for suffix, cls, config in encoders:
        tokenizer = folder / f"tokenizer{suffix}"
        write_word_tokenizer(tokenizer, list(words),
                             int(config.get("max_position_embeddings", 32)))
        vocab_size = len(json.loads((tokenizer / "vocab.json").read_text()))
        text_config = CLIPTextConfig.from_dict({**config, "vocab_size": vocab_size,
                                                "bos_token_id": 0, "eos_token_id": 1,
                                                "pad_token_id": 1})
        cls(text_config, rngs=rngs).save_pretrained(folder / f"text_encoder{suffix}")
    base = UNet2DConditionModel(UNetConfig.from_dict(dict(unet)), rngs=rngs)
    save_dreamlayer_unet(DreamLayerUNet(base, dl_config, rngs=rngs), folder)
    save_scheduler(scheduler_from_config(dict(scheduler)), folder / "scheduler")
    if vae is not None:
        _write_codec(folder, vae, transparency, seed)
    index = {"_class_name": "DreamLayerPipeline", "_dreamlayer_version": "0.1.0",
             "codec": dl_config.codec}
    if text_encoder_2 is not None:  # as SDXL: dropped prompts are zeros
        index["force_zeros_for_empty_prompt"] = True
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return folder


def _write_codec(folder: Path, vae: str | os.PathLike | Mapping[str, Any],
                 transparency: str | os.PathLike | Mapping[str, Any] | None, seed: int) -> None:
    """`vae/` and `transparency_decoder/` of a latent-codec folder (copied or random)."""
    from dreamlayer_jax.codecs.layerdiffuse import OWN_FOLDER
    from dreamlayer_jax.models.transparent_vae import UNet1024Config
    from dreamlayer_jax.models.vae import AutoencoderKL, VAEConfig
    from dreamlayer_jax.training.transparency import fresh_decoder

    for part, source in (("vae", vae), (OWN_FOLDER, transparency)):
        if source is None:
            continue
        if isinstance(source, Mapping):
            if part == "vae":
                AutoencoderKL(VAEConfig.from_dict(dict(source)),
                              rngs=nnx.Rngs(seed + 1)).save_pretrained(folder / part)
            else:
                fresh_decoder(UNet1024Config.from_dict(dict(source)),
                              seed + 2).save_pretrained(folder / part)
            continue
        source = Path(source)
        if not (source / "config.json").is_file():
            raise ConfigError(f"create_model_folder: {part}={str(source)!r} is not a model "
                              "part folder (no config.json)")
        shutil.copytree(source, folder / part, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("*.json.tmp", "train_*.json"))
