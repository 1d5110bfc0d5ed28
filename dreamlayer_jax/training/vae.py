"""Training a small `AutoencoderKL` on synthetic layers flattened on grey (a latent codec
for the built-in model's latent recipe, issue #15).

What the VAE sees is what a `LatentCodec` with LayerDiffuse's transparency encodes
(`codecs.layerdiffuse.grey_composite`): every scene gives its background (opaque), each
foreground's straight RGBA composited over 50% grey, and its composite (opaque), as RGB
in [-1, 1]. The objective is diffusers' reconstruction part of the VAE loss without the
perceptual and adversarial terms:

    loss = mean |decode(z) - x| + kl_weight * KL(q(z | x) || N(0, 1)) / latent elements

with `z` a posterior sample. The export is a diffusers `vae/` folder (config.json +
safetensors) whose `scaling_factor` is `1 / std` of the posterior means on held-out
images (as Stable Diffusion's 0.18215 was chosen), so scaled latents have unit variance.

    python -m dreamlayer_jax.cli.train_vae runs/vae --steps 600 --resolution 64
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from dreamlayer_jax.data.synthetic import SyntheticSceneGenerator
from dreamlayer_jax.errors import ConfigError
from dreamlayer_jax.models.vae import AutoencoderKL, VAEConfig

# 64 px -> 8 x 8 x 4 (downscale 8, as Stable Diffusion's VAE and as LayerDiffuse's
# transparent decoder requires: its latent joins the features at 1/8 of the image)
SMALL_VAE: dict[str, Any] = {
    "block_out_channels": [16, 32, 64, 64], "layers_per_block": 1, "latent_channels": 4,
    "norm_num_groups": 8, "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4, "sample_size": 64,
}
HELD_OUT_SEED = 10_000  # scene seeds (HELD_OUT_SEED, i) measure; training uses (seed, i)


def flattened_layers(scene: Any) -> np.ndarray:
    """A scene's layers as the VAE sees them: `uint8 [1 + n + 1, H, W, 3]` = background,
    each foreground over 50% grey, composite."""
    images = [scene.background]
    for layer in scene.layers:
        alpha = layer[..., 3:].astype(np.float32) / 255.0
        grey = 127.5 + (layer[..., :3].astype(np.float32) - 127.5) * alpha
        images.append(np.clip(np.round(grey), 0, 255).astype(np.uint8))
    images.append(scene.composite)
    return np.stack(images)


def image_pool(num_scenes: int, resolution: int, seed: int = 0,
               max_foregrounds: int = 3) -> np.ndarray:
    """The flattened layers of scenes `(seed, 0..num_scenes-1)`: `uint8 [N, H, W, 3]`."""
    generator = SyntheticSceneGenerator(resolution=resolution, max_foregrounds=max_foregrounds)
    return np.concatenate([flattened_layers(generator.sample((seed, i)))
                           for i in range(num_scenes)])


def to_signed(images: np.ndarray | jax.Array) -> jax.Array:
    """`uint8 [N, H, W, 3]` -> float32 in [-1, 1]."""
    return jnp.asarray(images, jnp.float32) / 127.5 - 1.0


def vae_loss(vae: AutoencoderKL, x: jax.Array, key: jax.Array,
             kl_weight: float) -> tuple[jax.Array, dict[str, jax.Array]]:
    """`(loss, {"l1", "kl"})` of images `x [N, H, W, 3]` in [-1, 1]; `kl` per latent
    element."""
    posterior = vae.encode(x)
    recon = vae.decode(posterior.sample(key))
    l1 = jnp.mean(jnp.abs(recon.astype(jnp.float32) - x))
    kl = jnp.mean(posterior.kl()) / math.prod(posterior.mean.shape[1:])
    return l1 + kl_weight * kl, {"l1": l1, "kl": kl}


def psnr(vae: AutoencoderKL, images: np.ndarray, batch: int = 32) -> float:
    """Mean PSNR (dB, pixels in [0, 1]) of the posterior-mode reconstructions."""
    values = []
    for start in range(0, len(images), batch):
        x = to_signed(images[start:start + batch])
        recon = jnp.clip(vae(x), -1.0, 1.0)
        mse = jnp.mean(jnp.square((recon - x) / 2.0), axis=(1, 2, 3))
        values.append(np.asarray(10.0 * jnp.log10(1.0 / jnp.maximum(mse, 1e-10))))
    return float(np.mean(np.concatenate(values)))


def latent_std(vae: AutoencoderKL, images: np.ndarray, batch: int = 32) -> float:
    """The standard deviation of the posterior means of `images` (all elements)."""
    means = [np.asarray(vae.encode(to_signed(images[s:s + batch])).mean)
             for s in range(0, len(images), batch)]
    return float(np.concatenate(means).std())


def train_vae(out: str | os.PathLike, *, config: dict[str, Any] | None = None,
              resolution: int = 64, steps: int = 600, batch: int = 16,
              learning_rate: float = 1e-3, kl_weight: float = 1e-4, scenes: int = 1024,
              held_out: int = 32, seed: int = 0, log_every: int = 50,
              init: str | os.PathLike | None = None,
              log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Train a VAE (`config`: `VAEConfig` fields, default `SMALL_VAE`) for `steps` steps of
    `batch` flattened layers drawn from `scenes` synthetic scenes of side `resolution`;
    write it to `out` (a diffusers `vae/` folder) with `scaling_factor = 1 / latent std`
    and `out/train_vae.json` (losses, held-out PSNR, seconds). Returns that record.
    With `init` (an earlier export) training continues from its weights and config, and
    the record's `total_steps` / `total_seconds` count the earlier runs too."""
    earlier: dict[str, Any] = {}
    if init is not None:
        vae_init = AutoencoderKL.from_pretrained(init)
        fields = {**dataclasses.asdict(vae_init.config), "sample_size": resolution}
        if (Path(init) / "train_vae.json").is_file():
            earlier = json.loads((Path(init) / "train_vae.json").read_text())
    else:
        fields = {**SMALL_VAE, **(config or {}), "sample_size": resolution}
    vae_config = VAEConfig.from_dict(fields)
    if resolution % vae_config.downscale:
        raise ConfigError(f"train_vae: resolution {resolution} is not a multiple of the "
                          f"VAE's downscale {vae_config.downscale}")
    start = time.perf_counter()
    pool = image_pool(scenes, resolution, seed)
    test = image_pool(held_out, resolution, HELD_OUT_SEED)
    vae = vae_init if init is not None else AutoencoderKL(vae_config, rngs=nnx.Rngs(seed))
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, learning_rate, min(50, max(steps // 10, 1)), max(steps, 2), learning_rate * 0.1)
    optimizer = nnx.Optimizer(vae, optax.adam(schedule), wrt=nnx.Param)

    @nnx.jit
    def step(vae, optimizer, x, key):
        (loss, aux), grads = nnx.value_and_grad(
            lambda m: vae_loss(m, x, key, kl_weight), has_aux=True)(vae)
        optimizer.update(vae, grads)
        return loss, aux

    rng = np.random.default_rng(seed)
    key = jax.random.key(seed)
    history = []
    psnr_before = psnr(vae, test)
    for i in range(1, steps + 1):
        key, sub = jax.random.split(key)
        x = to_signed(pool[rng.integers(0, len(pool), batch)])
        loss, aux = step(vae, optimizer, x, sub)
        if i % log_every == 0 or i in (1, steps):
            row = {"step": i, "loss": float(loss), "l1": float(aux["l1"]),
                   "kl": float(aux["kl"]), "seconds": time.perf_counter() - start}
            history.append(row)
            if log:
                log(json.dumps(row))
    std = latent_std(vae, test)
    record = {"steps": steps, "batch": batch, "resolution": resolution, "scenes": scenes,
              "images": len(pool), "learning_rate": learning_rate, "kl_weight": kl_weight,
              "config": fields, "held_out_psnr_db": psnr(vae, test),
              "held_out_psnr_db_at_init": psnr_before, "latent_std": std,
              "seconds": time.perf_counter() - start, "history": history}
    record["total_steps"] = steps + earlier.get("total_steps", earlier.get("steps", 0))
    record["total_seconds"] = record["seconds"] + earlier.get(
        "total_seconds", earlier.get("seconds", 0.0))
    save_vae(vae, out, scaling_factor=1.0 / max(std, 1e-6))
    (Path(out) / "train_vae.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def save_vae(vae: AutoencoderKL, out: str | os.PathLike, *, scaling_factor: float) -> Path:
    """Write `vae` with `scaling_factor` to `out` (diffusers layout)."""
    vae.config = dataclasses.replace(vae.config, scaling_factor=float(scaling_factor))
    return vae.save_pretrained(out)
