"""`LatentCodec`'s transparency mode "layerdiffuse": LayerDiffuse's released weights.

Conventions (LayerDiffuse's, which differ from the project's own decoder):

- encoding: the VAE encodes the layer's RGB composited on 50% grey (`0.5 + (rgb - 0.5) a`,
  not premultiplied); with an offset encoder the latent is moved to
  `mean + std * (offset + eps)` (`eps = 0` without a key), where `offset` comes from
  `[alpha, pad_rgb(rgba)]`; without one the latent is the grey composite's;
- decoding: the transparent decoder sees the VAE's RGB in [0, 1] and the **unscaled**
  latent (what the VAE decoder got), and predicts `[alpha, R, G, B]`, straight RGB; the
  codec returns it as RGBA (alpha last), clipped to [0, 1];
- `augment=True` decodes with the 8-way flip/rotation median (`decode_augmented`).

Selection: `load_transparency(model_folder, transparency=PATH)` returns the project's own
`TransparencyDecoder` or a `LayerDiffuseTransparency`, from `PATH` (a bare LayerDiffuse
decoder file, a folder written by `cli.convert_layerdiffuse`, or an own decoder's folder)
or else from the model folder's `transparency_decoder/` (its config.json's `_class_name`
picks the mode: "LayerDiffuse" or "UNet1024" for this one).
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from dreamlayer_jax.codecs.transparency import TransparencyDecoder
from dreamlayer_jax.errors import ConfigError, InputError, WeightsError
from dreamlayer_jax.io.layerdiffuse import (
    FOLDER_CLASS,
    PARTS,
    WEIGHTS_NAME,
    load_transparent_decoder,
    load_transparent_encoder,
)
from dreamlayer_jax.io.safetensors_io import load_config
from dreamlayer_jax.models.transparent_encoder import TransparentVAEEncoder
from dreamlayer_jax.models.transparent_vae import TransparentVAEDecoder
from dreamlayer_jax.models.vae import AutoencoderKL

MODE = "layerdiffuse"
OWN_FOLDER = "transparency_decoder"  # where a model folder keeps its transparency decoder


def grey_composite(rgba: jax.Array) -> jax.Array:
    """Straight RGBA `[N, H, W, 4]` over 50% grey: RGB `[N, H, W, 3]` in [0, 1]."""
    alpha = rgba[..., 3:]
    return 0.5 + (rgba[..., :3] - 0.5) * alpha


class LayerDiffuseTransparency(nnx.Module):
    """LayerDiffuse's transparent decoder, and optionally its offset encoder.

    `decode(rgb [N, H, W, 3] in [0, 1], latent [N, H/8, W/8, 4] unscaled) -> RGBA`;
    `encode(vae, rgba [N, H, W, 4], key) -> unscaled latent [N, H/8, W/8, 4]`.
    """

    mode = MODE

    def __init__(self, decoder: TransparentVAEDecoder,
                 encoder: TransparentVAEEncoder | None = None, *, augment: bool = False):
        self.decoder = decoder
        self.encoder = encoder
        self.augment = augment

    def decode(self, rgb: jax.Array, latent: jax.Array) -> jax.Array:
        if self.augment:
            return self.decoder.decode_augmented(rgb, latent)
        return self.decoder(rgb, latent)

    def encode(self, vae: AutoencoderKL, rgba: jax.Array,
               key: jax.Array | None = None) -> jax.Array:
        if rgba.ndim != 4 or rgba.shape[-1] != 4:
            raise InputError(f"LayerDiffuse encoding expects RGBA [N, H, W, 4], got shape "
                             f"{tuple(rgba.shape)}")
        posterior = vae.encode(grey_composite(rgba) * 2.0 - 1.0)
        if self.encoder is None:
            return posterior.mode() if key is None else posterior.sample(key)
        offset = self.encoder.offset(rgba).astype(posterior.mean.dtype)
        if key is not None:
            offset = offset + jax.random.normal(key, offset.shape, offset.dtype)
        return posterior.mean + posterior.std * offset


def _class_name(folder: Path) -> str | None:
    if not (folder / "config.json").is_file():
        return None
    return load_config(folder).get("_class_name")


def load_layerdiffuse(path: str | os.PathLike, *, augment: bool = False,
                      dtype: jnp.dtype = jnp.float32) -> LayerDiffuseTransparency:
    """LayerDiffuse's transparency from a bare decoder file, a decoder folder, or a folder
    written by `cli.convert_layerdiffuse` (decoder, and offset encoder if it has one)."""
    path = Path(path)
    if path.is_dir() and _class_name(path) == FOLDER_CLASS:
        if not (path / PARTS["decoder"]).is_dir():
            raise WeightsError(f"{str(path)!r} has no {PARTS['decoder']}/ (a LayerDiffuse "
                               "folder needs the transparent decoder)")
        decoder = load_transparent_decoder(path / PARTS["decoder"], dtype=dtype)
        encoder = None
        if (path / PARTS["encoder"]).is_dir():
            encoder = load_transparent_encoder(path / PARTS["encoder"], dtype=dtype)
        return LayerDiffuseTransparency(decoder, encoder, augment=augment)
    return LayerDiffuseTransparency(load_transparent_decoder(path, dtype=dtype), augment=augment)


def load_transparency(model_folder: str | os.PathLike | None,
                      transparency: str | os.PathLike | None = None, *, augment: bool = False,
                      dtype: jnp.dtype = jnp.float32,
                      ) -> TransparencyDecoder | LayerDiffuseTransparency | None:
    """The transparency part of a `LatentCodec`.

    `transparency` (a path) wins; otherwise the model folder's `transparency_decoder/`,
    whose config.json's `_class_name` picks the mode; None when neither exists (every
    decoded pixel is then opaque).
    """
    if transparency is not None:
        path = Path(transparency)
        if not path.exists():
            raise WeightsError(f"transparency {str(path)!r} does not exist")
    elif model_folder is not None and (Path(model_folder) / OWN_FOLDER).is_dir():
        path = Path(model_folder) / OWN_FOLDER
    else:
        return None
    if path.is_dir() and (path / WEIGHTS_NAME).is_file() and _class_name(path) not in (
            FOLDER_CLASS, TransparentVAEDecoder.torch_class_name):
        if not (path / "config.json").is_file():
            raise ConfigError(f"{str(path)!r} has weights but no config.json")
        return TransparencyDecoder.from_pretrained(path, dtype=dtype)
    return load_layerdiffuse(path, augment=augment, dtype=dtype)
