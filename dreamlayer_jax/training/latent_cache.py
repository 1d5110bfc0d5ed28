"""Cached-latent training: encode a run's scenes once, then train without the encoders.

    folder = cache_latents(cfg, "data/sd15_cache")        # codec + text encoders, once
    ... TrainConfig(data_cache="data/sd15_cache", ...)    # the trainer reads it

`cache_latents` reads the scenes the trainer would (`data_dir`, or the in-memory
synthetic scenes of a config without one), lays each out in `L` slots, and runs the
train step's own encoders (`training.step.encode_layers`, `encode_layer_text`,
`layer_token_ids`) over them in jitted chunks: latents of the scene and of its mirror
image, each slot's text embedding (SDXL: pooled text and time ids too; the paper
variant: its concatenated global prompt, the token ids and the alphas its context loss
reads; the alphas too with `edge_loss_weight`), plus the empty prompt's embedding for
prompt dropout. `data.latent_cache` writes them atomically. The cache's `fingerprint`
(codec and text-encoder weights, tokenizers, variant, `L`) must match the trained
model's (`open_cache`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from dreamlayer_jax.data.batch import collate, pad_example
from dreamlayer_jax.data.compositing import to_uint8
from dreamlayer_jax.data.latent_cache import CacheSource, write_cache
from dreamlayer_jax.errors import ConfigError
from dreamlayer_jax.training.config import TrainConfig
from dreamlayer_jax.training.step import (
    CACHED_BATCH_KEYS,
    encode_layer_text,
    encode_layers,
    host_arrays,
    layer_token_ids,
)

PROBE = "a small red star and a large green ring in front of a striped blue wall"
OPTIONAL_NDIM = {"text_embeds": 3, "time_ids": 3, "token_ids": 3, "alphas": 4}


def _digest(tree: Any, salt: str = "") -> str:
    """sha256 (16 hex digits) of a pytree's paths, shapes, dtypes and bytes."""
    h = hashlib.sha256(salt.encode())
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        value = np.asarray(leaf)
        h.update(f"{jax.tree_util.keystr(path)}{value.shape}{value.dtype}".encode())
        h.update(np.ascontiguousarray(value).tobytes())
    return h.hexdigest()[:16]


def codec_digest(codec: Any) -> str:
    """The codec's kind, settings and the weights of its modules (the VAE)."""
    fields = vars(codec) if hasattr(codec, "__dict__") else {}
    modules = {k: nnx.to_pure_dict(nnx.state(v)) for k, v in sorted(fields.items())
               if isinstance(v, nnx.Module)}
    plain = {k: v for k, v in sorted(fields.items()) if isinstance(v, int | float | str)}
    return _digest(modules, f"{type(codec).__name__}{plain}")


def cache_fingerprint(pipe: Any, max_layers: int) -> dict[str, Any]:
    """What a cache depends on: `{codec, text_encoders, tokenizers, variant, max_layers,
    force_zeros}` (weights as digests; tokenizers as `length:digest of a probe`)."""
    cond = pipe.conditioner
    tokenizers = [f"{tok.model_max_length}:{_digest(ids)}"
                  for tok, ids in zip(cond.tokenizers, cond.tokenize([PROBE]), strict=True)]
    return {"codec": codec_digest(pipe.codec),
            "text_encoders": _digest([nnx.to_pure_dict(p) for p in cond.params]),
            "tokenizers": tokenizers, "variant": pipe.config.variant,
            "max_layers": int(max_layers),
            "force_zeros": bool(cond.is_sdxl and cond.force_zeros_for_empty_prompt)}


FINGERPRINT_WORDS = {"codec": "codec (VAE weights)", "text_encoders": "text encoder weights",
                     "tokenizers": "tokenizers (length:vocabulary)", "variant": "variant",
                     "max_layers": "max_layers", "force_zeros": "empty-prompt zeros (SDXL)"}


def check_cacheable(cfg: TrainConfig, variant: str) -> None:
    """ConfigError for what the cached path cannot train (one line each)."""
    if cfg.mode != "diffusion":
        raise ConfigError(f"data_cache trains the layer UNet only (mode='diffusion'), not "
                          f"mode={cfg.mode!r}: train from data_dir")
    if cfg.data_cache and cfg.data_dir:
        raise ConfigError("set data_dir (raw scenes) or data_cache (a latent cache), not both")
    if variant == "paper" and cfg.prompt_dropout > 0:
        raise ConfigError(
            f"data_cache: the paper variant rebuilds the global prompt from the layer prompts "
            f"left after dropout, which needs the text encoder: set prompt_dropout=0 "
            f"(now {cfg.prompt_dropout}) or train from data_dir")


def open_cache(cfg: TrainConfig, pipe: Any, max_layers: int) -> CacheSource:
    """The run's `data_cache` split, refused (ConfigError) when another model, codec,
    tokenizer, variant or `L` made it, or when the run needs what it lacks."""
    check_cacheable(cfg, pipe.config.variant)
    source = CacheSource(cfg.data_cache, cfg.split)
    stored = source.metadata().get("fingerprint", {})
    wanted = cache_fingerprint(pipe, max_layers)
    for key, words in FINGERPRINT_WORDS.items():
        if stored.get(key) != wanted[key]:
            raise ConfigError(
                f"data_cache {cfg.data_cache} was made with other {words} ({stored.get(key)}) "
                f"than this run's ({wanted[key]}): cache again with this run's config")
    return source


def cached_batch_keys(source: CacheSource) -> dict[str, int]:
    """The cached batch's arrays (name -> ndim) for `training.step.jit_train_step`."""
    keys = source.metadata().get("keys", [])
    return {**CACHED_BATCH_KEYS, **{k: OPTIONAL_NDIM[k] for k in keys}}


def cached_arrays(batch: dict[str, Any], keys: dict[str, int]) -> dict[str, np.ndarray]:
    """A cached batch's arrays named in `keys` (the prompts and scene ids left out)."""
    return {k: np.asarray(batch[k]) for k in keys}


def _encoder(pipe: Any, paper: bool, empty_ids: np.ndarray | None) -> Callable:
    """Jitted `(text_params, arrays) -> (latents, flipped latents, text, added)`."""
    cond = pipe.conditioner
    special = cond.special_ids() if paper else None

    def encode(text_params, arrays):
        pixels = arrays["pixels"]
        ids, _ = layer_token_ids(arrays, len(cond.graphdefs), special)
        text, added = encode_layer_text(cond.graphdefs, text_params, ids, pixels.shape[2:4],
                                        empty_ids)
        return (encode_layers(pipe.codec, pixels),
                encode_layers(pipe.codec, pixels[:, :, :, ::-1]), text, added)

    return jax.jit(encode)


def _records(pipe: Any, source: Any, max_layers: int, chunk: int, paper: bool,
             with_alphas: bool, empty_ids: np.ndarray | None,
             progress: Callable[[int], None] | None) -> Iterator[dict[str, Any]]:
    """One record per scene of `source`, in order (`data.latent_cache`'s layout)."""
    cond = pipe.conditioner
    text_params = [nnx.to_pure_dict(p) for p in cond.params]
    encode = _encoder(pipe, paper, empty_ids)
    for start in range(0, len(source), chunk):
        batch = collate([pad_example(source[i], max_layers)
                         for i in range(start, min(start + chunk, len(source)))])
        arrays = host_arrays(cond, batch)
        latents, flipped, text, added = jax.device_get(encode(text_params, arrays))
        for j, scene_id in enumerate(batch["scene_ids"]):
            valid = arrays["layer_valid"][j]
            record = {"scene_id": scene_id, "prompts": batch["prompts"][j],
                      "layer_valid": valid.astype(np.uint8), "boxes": arrays["boxes"][j],
                      "num_foregrounds": int(valid.sum()) - 2, "latents": latents[j],
                      "latents_flipped": flipped[j], "text": text[j]}
            if added is not None:
                record.update({k: np.asarray(v[j], np.float32) for k, v in added.items()})
            if paper:
                record["token_ids"] = arrays["token_ids"][j].astype(np.int32)
            if with_alphas:
                record["alphas"] = to_uint8(arrays["pixels"][j, ..., 3])
            yield record
        if progress is not None:
            progress(min(start + chunk, len(source)))


def cache_latents(cfg: TrainConfig, out: str | os.PathLike, *, chunk: int = 4,
                  progress: Callable[[int], None] | None = None) -> Path:
    """Encode the scenes `cfg` trains on (its `data_dir` split, or its synthetic
    scenes) with its model's codec and text encoders into the cache folder `out`;
    returns the versioned dataset folder. Nothing is left in `out` on error."""
    from dreamlayer_jax.io import resolve_model_folder
    from dreamlayer_jax.pipeline.dreamlayer import DreamLayerPipeline
    from dreamlayer_jax.training.sources import load_train_source

    if not cfg.model:
        raise ConfigError("cache_latents: model (the base model folder) is required")
    if chunk < 1:
        raise ConfigError(f"chunk must be >= 1, got {chunk}")
    pipe = DreamLayerPipeline.from_pretrained(resolve_model_folder(cfg.model),
                                              dreamlayer=cfg.dreamlayer)
    max_layers = cfg.max_layers or pipe.config.max_layers
    paper = pipe.config.variant == "paper"
    with_alphas = paper or cfg.edge_loss_weight > 0  # the context loss', the edge weights'
    source = load_train_source(cfg, max_layers)
    cond = pipe.conditioner
    empty_ids = (cond.tokenize([""])[0][0]
                 if cond.is_sdxl and cond.force_zeros_for_empty_prompt else None)
    keys = [*(["text_embeds", "time_ids"] if cond.is_sdxl else []),
            *(["token_ids"] if paper else []), *(["alphas"] if with_alphas else [])]
    first = pad_example(source[0], max_layers)["pixels"]
    empty_text, empty_added = jax.jit(encode_layer_text, static_argnums=(0, 3))(
        cond.graphdefs, [nnx.to_pure_dict(p) for p in cond.params],
        [i[None, None] for i in cond.tokenize([""])], tuple(first.shape[1:3]), empty_ids)
    empty = {"text": np.asarray(empty_text[0, 0])}
    if empty_added is not None:
        empty["text_embeds"] = np.asarray(empty_added["text_embeds"][0, 0])
    metadata = {"fingerprint": cache_fingerprint(pipe, max_layers), "keys": keys,
                "count": len(source), "source": cfg.data_dir or "synthetic",
                "seed": cfg.seed}
    return write_cache(out, _records(pipe, source, max_layers, chunk, paper, with_alphas,
                                     empty_ids, progress),
                       keys=keys, metadata=metadata, empty=empty, split=cfg.split)

