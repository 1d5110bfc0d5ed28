"""The transparency decoder's objective (`TrainConfig.mode = "transparency"`).

`LatentCodec` stores a layer as the VAE latent of its premultiplied RGB; its
`TransparencyDecoder` must recover the layer's alpha and straight RGB from that latent
and the VAE's decoded RGB. Trained on the RGBA layers of the same batches the denoiser
sees (`pixels[B, L, H, W, 4]`, valid slots only), with the VAE frozen:

    loss = mean_valid (alpha_pred - alpha)^2 + mean_valid alpha * (rgb_pred - rgb)^2

The RGB term is weighted by the true alpha: a straight colour under alpha 0 is undefined.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from dreamlayer_jax.codecs.latent import LatentCodec
from dreamlayer_jax.errors import ConfigError


def transparency_codec(codec: Any, model: str) -> LatentCodec:
    """The model's codec if it has a transparency decoder to train, else ConfigError."""
    if not isinstance(codec, LatentCodec):
        raise ConfigError(f"mode='transparency' trains a LatentCodec's transparency decoder; "
                          f"{model} uses the pixel codec (its alpha is exact, nothing to train)")
    if codec.transparency is None:
        raise ConfigError(f"mode='transparency': {model} has no transparency_decoder/ folder "
                          "(create one with TransparencyDecoder(...).save_pretrained)")
    return codec


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
    (`text_params` and the prompts are unused: the decoder sees no text)."""

    def loss_fn(params, text_params, batch, key):
        del text_params
        pixels, layer_valid = batch["pixels"], batch["layer_valid"]
        b, num_layers = layer_valid.shape
        rgba = pixels.reshape(b * num_layers, *pixels.shape[2:]).astype(jnp.float32)
        latents = jax.lax.stop_gradient(codec.encode(rgba, key))
        rgb = jax.lax.stop_gradient(codec.decode_rgb(latents))
        decoder = nnx.merge(graph, params)
        pred = decoder(latents, rgb)
        alpha_mse, rgb_mse = reconstruction_losses(pred, rgba, layer_valid.reshape(-1))
        return alpha_mse + rgb_mse, {"alpha_mse": alpha_mse, "rgb_mse": rgb_mse}

    return loss_fn
