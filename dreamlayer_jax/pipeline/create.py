"""Creating a new, randomly initialised DreamLayer model folder (to train from scratch)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from flax import nnx

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
    seed: int = 0,
) -> Path:
    """Write a complete model folder with random weights (pixel codec; no VAE needed).

    `words` is the closed vocabulary the tokenizer keeps as whole tokens; the text
    encoder's `vocab_size` and `max_position_embeddings` follow the tokenizer. With
    `text_encoder_2` (a config with `projection_dim`) the model is SDXL-style: a second,
    projecting encoder and tokenizer, for a UNet with `addition_embed_type="text_time"`.
    """
    folder = Path(folder)
    dl_config = DreamLayerConfig.from_dict(dict(dreamlayer))
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
    index = {"_class_name": "DreamLayerPipeline", "_dreamlayer_version": "0.1.0",
             "codec": dl_config.codec}
    if text_encoder_2 is not None:  # as SDXL: dropped prompts are zeros
        index["force_zeros_for_empty_prompt"] = True
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return folder
