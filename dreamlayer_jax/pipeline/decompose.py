"""Image-to-layer decomposition, training-free (DESIGN.md section 2).

The picture is encoded, DDIM-inverted into the global layer's trajectory, and the
background and foregrounds are generated with the global layer pinned to that trajectory
at every step, so LSSA / CACA make the layers copy the picture's content.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from PIL import Image, UnidentifiedImageError

from dreamlayer_jax.attention.context import LayerContext
from dreamlayer_jax.data.image_io import pil_to_rgba
from dreamlayer_jax.errors import InputError
from dreamlayer_jax.models.layer_unet import DreamLayerUNet
from dreamlayer_jax.pipeline.irh import IRHSettings
from dreamlayer_jax.pipeline.result import LayeredResult
from dreamlayer_jax.pipeline.scene import Layer, Scene
from dreamlayer_jax.schedulers.base import SamplingPlan
from dreamlayer_jax.schedulers.ddim import DDIMScheduler
from dreamlayer_jax.schedulers.loop import ModelFn, ddim_invert_loop

if TYPE_CHECKING:
    from dreamlayer_jax.pipeline.dreamlayer import DreamLayerPipeline

ImageLike = np.ndarray | Image.Image | str | os.PathLike


def load_image(image: ImageLike, resolution: int) -> np.ndarray:
    """The picture as float `[resolution, resolution, 3]` RGB in [0, 1].

    Accepts a `uint8` `[H, W, 3 | 4]` array, a PIL image or a path. Every PIL mode is
    read as RGBA (16-bit grey scaled to 8 bits); a 4-channel picture is flattened over
    black (its premultiplied colour, what the codecs store). A picture of another size
    is resized (bicubic) to the model's square resolution with a warning: the aspect
    ratio is not kept, so the boxes are fractions of the resized canvas.
    """
    if isinstance(image, str | os.PathLike):
        path = Path(image)
        try:
            with Image.open(path) as opened:
                opened.load()
                image = opened.copy()
        except FileNotFoundError as exc:
            raise InputError(f"image file {str(path)!r} does not exist") from exc
        except (OSError, UnidentifiedImageError) as exc:
            raise InputError(f"cannot read image {str(path)!r}: {exc}") from exc
    if isinstance(image, Image.Image):
        array = pil_to_rgba(image)  # 16-bit grey scaled to 8 bits, palettes keep alpha
    elif isinstance(image, np.ndarray):
        array = image
        if array.dtype != np.uint8:
            raise InputError(f"an image array must be uint8, got {array.dtype}")
        if array.ndim != 3 or array.shape[-1] not in (3, 4):
            raise InputError(f"an image array must be [H, W, 3] or [H, W, 4], got {array.shape}")
    else:
        raise InputError(f"expected an image (array, PIL image or path), got "
                         f"{type(image).__name__}")
    pixels = array.astype(np.float32) / 255.0
    if pixels.shape[-1] == 4:
        pixels = pixels[..., :3] * pixels[..., 3:]
    if pixels.shape[:2] != (resolution, resolution):
        warnings.warn(f"image of size {pixels.shape[1]}x{pixels.shape[0]} resized to the "
                      f"model's {resolution}x{resolution}", stacklevel=3)
        rgb8 = Image.fromarray((pixels * 255.0 + 0.5).astype(np.uint8), mode="RGB")
        rgb8 = rgb8.resize((resolution, resolution), Image.Resampling.BICUBIC)
        pixels = np.asarray(rgb8).astype(np.float32) / 255.0
    return pixels


def encode_image(pipe: DreamLayerPipeline, pixels: np.ndarray) -> jax.Array:
    """Opaque RGB `[H, W, 3]` in [0, 1] -> the codec's latent `[1, h, w, c]` (alpha 1)."""
    rgba = np.concatenate([pixels, np.ones_like(pixels[..., :1])], axis=-1)
    return pipe.codec.encode(jnp.asarray(rgba)[None])


def global_model_fn(unet: DreamLayerUNet, ctx: LayerContext):
    """`model_fn(z[B, h, w, c], t, i)`: the UNet's conditional output for the global layer.

    The UNet runs on the scene's full layer context with `z` in the global slot and zeros
    in the other slots. The global layer's self-attention only sees itself (LSSA), so the
    other slots' latents do not change its output, while its cross-attention keeps CACA's
    region-aware prompts (the foregrounds' text inside their boxes): the same conditioning
    the global slot has during sampling. A one-slot context would be `L` times cheaper but
    would drop those region prompts.
    """

    def model_fn(z: jax.Array, t: jax.Array, i: jax.Array) -> jax.Array:
        del i
        b, num_layers = ctx.layer_valid.shape
        full = jnp.zeros((b, num_layers, *z.shape[1:]), z.dtype).at[:, -1].set(z)
        return unet(full, t, ctx)[:, -1].astype(jnp.float32)

    return model_fn


@partial(jax.jit, static_argnames=("graphdef", "sched"))
def invert_global(graphdef: nnx.GraphDef, params: nnx.State, sched: DDIMScheduler,
                  plan: SamplingPlan, ctx: LayerContext, x0: jax.Array) -> jax.Array:
    """DDIM-invert clean global latents `x0[B, h, w, c]` (one `lax.scan`).

    Returns the trajectory `[S + 1, B, h, w, c]`: index `i < S` the latent at the start of
    sampling step `i` (index 0 is `x_T`), index `S` the clean `x0` itself, the layout
    `sample_layers(mode="decompose", pinned=...)` expects.
    """
    return invert_trajectory(sched, plan, global_model_fn(nnx.merge(graphdef, params), ctx), x0)


def invert_trajectory(sched: DDIMScheduler, plan: SamplingPlan, model_fn: ModelFn,
                      x0: jax.Array) -> jax.Array:
    """`ddim_invert_loop` laid out as the pinned trajectory `[S + 1, *x0.shape]`."""
    _, levels = ddim_invert_loop(sched, plan, model_fn, x0)
    return jnp.concatenate([levels, x0[None].astype(levels.dtype)])


def decompose(
    pipe: DreamLayerPipeline,
    image: ImageLike,
    layers: Sequence[Layer | str] = (),
    background: str = "background",
    prompt: str | None = None,
    num_inference_steps: int = 30,
    guidance_scale: float = 5.0,
    seed: int = 0,
    *,
    caca: bool = True,
    lssa: bool = True,
    progress: bool = False,
) -> LayeredResult:
    """Split a picture into a background and transparent foregrounds.

    Args:
      image: `uint8[H, W, 3 | 4]`, a PIL image or a path (see `load_image` for modes and
        sizes: a picture of another size is resized to the model's resolution).
      layers: the foregrounds in paint order; a bare prompt (or a `Layer` without a box)
        covers the whole image.
      background: the background's prompt; `prompt`: the picture's prompt (default: the
        layer prompts and the background joined).
      guidance_scale: classifier-free guidance of the generated layers; the inversion
        always uses the conditional output of the global prompt (no guidance).
    Returns:
      a `LayeredResult` whose global latent is exactly the picture's encoding. IRH is off
      during decomposition: the global layer is pinned, there is nothing to harmonize.
    """
    layers = tuple(Layer(l) if isinstance(l, str) else l for l in layers)
    if prompt is None:
        prompt = ", ".join([*(l.prompt for l in layers), background])
    scene = Scene(prompt=prompt, background=background, layers=layers)
    pipe._check_sampling_args([scene], num_inference_steps, guidance_scale, [seed])
    pixels = load_image(image, pipe.config.resolution)

    sched = pipe.with_scheduler("ddim")
    plan = sched.set_timesteps(num_inference_steps)
    ctx, uncond = pipe.layer_context([scene], caca=caca, lssa=lssa)
    x0 = encode_image(pipe, pixels)
    pinned = invert_global(pipe._unet_graph, pipe._unet_params, sched, plan, ctx, x0)
    noise = pipe.initial_noise([seed], ctx.num_layers, pipe.latent_shape())
    x = (noise * sched.init_noise_sigma(plan)).at[:, -1].set(pinned[0])
    settings = IRHSettings(enabled=False, start=pipe.config.irh_start,
                           retain=pipe.config.irh_retain)
    latents = pipe.run_sampler(sched, plan, ctx, uncond, x, guidance_scale, seed, settings,
                               mode="decompose", pinned=pinned, progress=progress)
    info: dict[str, Any] = {
        "mode": "decompose", "seed": [seed], "steps": num_inference_steps,
        "guidance_scale": guidance_scale, "scheduler": sched.kind, "model": pipe.name,
        "caca": caca, "lssa": lssa, "irh": False, "irh_start": settings.start,
        "irh_retain": settings.retain}
    return pipe.to_results([scene], latents, ctx, info)[0]
