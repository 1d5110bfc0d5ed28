"""The transparency decoder's objective (`TrainConfig.mode = "transparency"`).

A `LatentCodec`'s transparency decoder learns to recover a layer's alpha and straight
RGB from its latent and the VAE's decoded RGB, on the RGBA layers of the same batches
the denoiser sees (`pixels[B, L, H, W, 4]`, valid slots only), with the VAE (and any
offset encoder) frozen. Two decoders train, each with its codec's conventions:

- the project's own `TransparencyDecoder` (`transparency=""`, the model folder's
  `transparency_decoder/`): the VAE encodes the premultiplied RGB; the decoder sees the
  scaled latent and the decoded RGB;
- LayerDiffuse's `TransparentVAEDecoder` (mode "layerdiffuse", `codecs.layerdiffuse`):
  the VAE encodes the RGB composited on 50% grey (moved by the offset encoder if there
  is one); the decoder sees the decoded RGB in [0, 1] and the **unscaled** latent and
  predicts `[alpha, R, G, B]` (its raw, unclipped output is what the loss sees). It
  starts from the model folder's LayerDiffuse decoder, from a file
  (`transparency=PATH`: LayerDiffuse's public `vae_transparent_decoder.safetensors`,
  a `convert_layerdiffuse` folder or an earlier export) or from scratch
  (`transparency="layerdiffuse"`, widths from `transparency_config`).

Both minimise

    loss = mean_valid (alpha_pred - alpha)^2 + mean_valid alpha * (rgb_pred - rgb)^2

The RGB term is weighted by the true alpha: a straight colour under alpha 0 is undefined.
The export (`save_transparency`) is what `load_transparency` / `--transparency` loads.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util

from dreamlayer_jax.codecs.latent import LatentCodec
from dreamlayer_jax.codecs.layerdiffuse import LayerDiffuseTransparency
from dreamlayer_jax.errors import ConfigError
from dreamlayer_jax.io.layerdiffuse import FOLDER_CLASS, PARTS
from dreamlayer_jax.models.transparent_vae import (
    LATENT_BLOCK,
    TransparentVAEDecoder,
    UNet1024Config,
    to_rgba,
)

SCRATCH = "layerdiffuse"  # `TrainConfig.transparency`: a fresh LayerDiffuse decoder


def check_transparency_fields(cfg: Any) -> None:
    """`TrainConfig.transparency` / `transparency_config` make sense together (ConfigError)."""
    if cfg.mode != "transparency":
        raise ConfigError(f"train config: transparency={cfg.transparency!r} and "
                          "transparency_config choose the decoder of mode='transparency'; "
                          f"mode={cfg.mode!r} trains the UNet")
    if cfg.transparency_config and cfg.transparency != SCRATCH:
        raise ConfigError(f"train config: transparency_config sets the widths of a fresh "
                          f"decoder (transparency={SCRATCH!r}); transparency="
                          f"{cfg.transparency!r} brings its own config")
    if cfg.transparency_config:
        if not isinstance(cfg.transparency_config, dict):
            raise ConfigError("train config: transparency_config must be a dict of "
                              "UNet1024Config fields, e.g. {'block_out_channels': ...}")
        unknown = sorted(set(cfg.transparency_config) - set(UNet1024Config.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"train config: transparency_config has unknown keys {unknown}")
        UNet1024Config.from_dict(cfg.transparency_config)  # ConfigError on a bad value


def start_path(cfg: Any) -> str | None:
    """The transparency file a run starts from (`from_pretrained(transparency=...)`):
    None for the model folder's own decoder or a fresh one."""
    return None if cfg.transparency in ("", SCRATCH) else cfg.transparency


def transparency_codec(codec: Any, cfg: Any) -> LatentCodec:
    """The codec whose transparency decoder `cfg` trains (a fresh LayerDiffuse decoder for
    `transparency="layerdiffuse"`, keeping the model's offset encoder), else ConfigError."""
    if not isinstance(codec, LatentCodec):
        raise ConfigError(f"mode='transparency' trains a LatentCodec's transparency decoder; "
                          f"{cfg.model} uses the pixel codec (its alpha is exact, nothing to "
                          "train)")
    if cfg.transparency == SCRATCH:
        old = codec.transparency
        encoder = old.encoder if isinstance(old, LayerDiffuseTransparency) else None
        decoder = fresh_decoder(UNet1024Config.from_dict(cfg.transparency_config), cfg.seed)
        codec = LatentCodec(codec.vae, LayerDiffuseTransparency(decoder, encoder))
    if codec.transparency is None:
        raise ConfigError(f"mode='transparency': {cfg.model} has no transparency_decoder/ "
                          "folder; set transparency=PATH (LayerDiffuse's decoder file) or "
                          f"transparency={SCRATCH!r} (a fresh one), or create one with "
                          "TransparencyDecoder(...).save_pretrained")
    if codec.transparency_mode == "layerdiffuse":
        if codec.downsample != 2 ** LATENT_BLOCK:
            raise ConfigError(f"mode='transparency': LayerDiffuse's decoder reads latents at "
                              f"1/{2 ** LATENT_BLOCK} of the image; {cfg.model}'s VAE "
                              f"downsamples by {codec.downsample}")
        multiple = codec.transparency.decoder.config.multiple
        if not cfg.data_dir and cfg.synthetic_resolution % multiple:
            raise ConfigError(f"mode='transparency': this LayerDiffuse decoder needs image "
                              f"sides that are multiples of {multiple}; synthetic_resolution="
                              f"{cfg.synthetic_resolution} is not")
    return codec


def fresh_decoder(config: UNet1024Config, seed: int) -> TransparentVAEDecoder:
    """A decoder initialised as PyTorch initialises LayerDiffuse's `UNet1024` (what it was
    trained from): every conv and linear weight and bias uniform in `+-1/sqrt(fan_in)`,
    the norms' scale 1 and bias 0.

    One `U(-1, 1)` draw from `jax.random.key(seed)`, cut and scaled per tensor: eager or
    jitted initialisers compile a program per parameter shape (tens of seconds on a CPU).
    """
    graph, state = nnx.split(nnx.eval_shape(
        lambda: TransparentVAEDecoder(config, rngs=nnx.Rngs(0))))
    flat = traverse_util.flatten_dict(nnx.to_pure_dict(state))
    sizes = [math.prod(leaf.shape) for leaf in flat.values()]
    draws = np.asarray(jax.random.uniform(jax.random.key(seed), (sum(sizes),),
                                          minval=-1.0, maxval=1.0))
    values, offset = {}, 0
    for (path, leaf), size in zip(flat.items(), sizes, strict=True):
        kernel = flat.get((*path[:-1], "kernel"))
        if kernel is None:  # a GroupNorm
            value = np.full(leaf.shape, 1.0 if path[-1] == "scale" else 0.0)
        else:
            fan_in = math.prod(kernel.shape[:-1])  # [kh, kw, in, out] or [in, out]
            value = draws[offset:offset + size].reshape(leaf.shape) / math.sqrt(fan_in)
        offset += size
        values[path] = jnp.asarray(value, leaf.dtype)
    nnx.replace_by_pure_dict(state, traverse_util.unflatten_dict(values))
    return nnx.merge(graph, state)


def trained_module(codec: LatentCodec) -> nnx.Module:
    """The module mode "transparency" trains: the own decoder or LayerDiffuse's decoder
    (its offset encoder stays frozen)."""
    if isinstance(codec.transparency, LayerDiffuseTransparency):
        return codec.transparency.decoder
    return codec.transparency


def reconstruction_losses(pred: jax.Array, target: jax.Array,
                          valid: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`(alpha MSE, alpha-weighted RGB MSE)` over the valid layers.

    `pred, target[N, H, W, 4]` straight RGBA in [0, 1]; `valid[N]` bool.
    """
    weight = valid.astype(jnp.float32)[:, None, None]
    count = jnp.maximum(weight.sum() * pred.shape[1] * pred.shape[2], 1.0)
    alpha = target[..., 3]
    alpha_err = jnp.square(pred[..., 3] - alpha)
    rgb_err = alpha * jnp.square(pred[..., :3] - target[..., :3]).mean(-1)
    return (alpha_err * weight).sum() / count, (rgb_err * weight).sum() / count


def make_transparency_loss_fn(graph: nnx.GraphDef, codec: LatentCodec) -> Callable:
    """`loss(params, text_params, batch, key) -> (loss, aux)`, the trainer's signature
    (`text_params` and the prompts are unused: the decoder sees no text). `graph` is
    `trained_module(codec)`'s."""
    layerdiffuse = isinstance(codec.transparency, LayerDiffuseTransparency)

    def loss_fn(params, text_params, batch, key):
        del text_params
        pixels, layer_valid = batch["pixels"], batch["layer_valid"]
        b, num_layers = layer_valid.shape
        rgba = pixels.reshape(b * num_layers, *pixels.shape[2:]).astype(jnp.float32)
        latents = jax.lax.stop_gradient(codec.encode(rgba, key))
        rgb = jax.lax.stop_gradient(codec.decode_rgb(latents))
        decoder = nnx.merge(graph, params)
        if layerdiffuse:  # [alpha, R, G, B] from the decoded RGB and the unscaled latent
            pred = to_rgba(decoder.predict(rgb, codec.unscale(latents)).astype(jnp.float32))
        else:
            pred = decoder(latents, rgb)
        alpha_mse, rgb_mse = reconstruction_losses(pred, rgba, layer_valid.reshape(-1))
        return alpha_mse + rgb_mse, {"alpha_mse": alpha_mse, "rgb_mse": rgb_mse}

    return loss_fn


def save_transparency(module: nnx.Module, codec: LatentCodec,
                      folder: str | os.PathLike) -> Path:
    """Write the trained `module` (with the EMA weights) where `load_transparency` finds
    it: the decoder's own folder (config.json + weights; a LayerDiffuse decoder's weights
    keep LayerDiffuse's key names), or, for a LayerDiffuse decoder with an offset encoder,
    a `convert_layerdiffuse`-style folder holding both."""
    folder = Path(folder)
    transparency = codec.transparency
    if not isinstance(transparency, LayerDiffuseTransparency) or transparency.encoder is None:
        return module.save_pretrained(folder)
    module.save_pretrained(folder / PARTS["decoder"])
    transparency.encoder.save_pretrained(folder / PARTS["encoder"])
    parts = {kind: PARTS[kind] for kind in ("decoder", "encoder")}
    (folder / "config.json").write_text(json.dumps(
        {"_class_name": FOLDER_CLASS, "parts": parts}, indent=2) + "\n")
    return folder
