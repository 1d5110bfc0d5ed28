"""Image-to-layer decomposition, training-free; the model's variant picks the method.

- Box variant (DESIGN.md section 2): the picture is encoded, DDIM-inverted into the
  global layer's trajectory, and the background and foregrounds are generated with the
  global layer, and the background outside the foregrounds' boxes, pinned to that
  trajectory at every step, so LSSA / CACA make the layers copy the picture's content
  and the background only fills in what the foregrounds hide. The generated layers are
  sampled with DDIM's eta 1, and each foreground is then re-cut from the picture
  (`pipeline.matte`).
- Paper variant (DESIGN.md section 8, eq. 15): the picture's latent is copied into every
  slot (`k + 1` layers and the global one) and the copies are DDIM-inverted together,
  with LSSA masked so that the global layer attends to its own block only
  (`inversion_layer_mask`); each slot's inverted latent then seeds that slot, and all
  layers are denoised with the layer prompts, the paper form of IRH included, as in
  generation.
"""

from __future__ import annotations

import dataclasses
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
from dreamlayer_jax.attention.masks import background_region, foreground_regions
from dreamlayer_jax.data.compositing import to_float, to_uint8
from dreamlayer_jax.data.image_io import pil_to_rgba
from dreamlayer_jax.errors import InputError
from dreamlayer_jax.models.layer_unet import DreamLayerUNet
from dreamlayer_jax.pipeline.irh import IRHSettings, resolve_settings, settings_record
from dreamlayer_jax.pipeline.matte import picture_matte
from dreamlayer_jax.pipeline.result import LayeredResult
from dreamlayer_jax.pipeline.scene import FULL_BOX, Layer, Scene
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
        rgb8 = Image.fromarray(to_uint8(pixels), mode="RGB")
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


def background_keep(ctx: LayerContext, h: int, w: int, background: bool = True) -> jax.Array:
    """`bool[B, L, h, w, 1]`: the latent cells the box decomposition holds to the picture.

    The whole global slot and, with `background`, the background's cells outside every
    foreground's box: there the picture is the background (a box variant's foreground
    lives in its box). Boxes are dilated by `ctx.box_margin` plus one latent cell, since a
    cell next to a box edge still encodes pixels of the foreground. The background inside
    the boxes, and every foreground, are generated.
    """
    b, num_layers = ctx.layer_valid.shape
    margin = ctx.box_margin + 1.0 / min(h, w)
    fg = foreground_regions(ctx.boxes, ctx.roles, ctx.layer_valid, h, w, margin)
    outside = background_region(fg).reshape(b, h, w, 1) & background  # [B, h, w, 1]
    keep = jnp.zeros((b, num_layers, h, w, 1), bool)
    return keep.at[:, -1].set(True).at[:, 0].set(outside)


def inversion_layer_mask(layer_valid: jax.Array) -> jax.Array:
    """Paper eq. 15 as an LSSA layer mask, `bool[B, L, L]` (row: query layer, column: key
    layer; `LayerContext.layer_mask`).

    Our reading: during inversion the global layer (row `L-1`) reads its own keys and
    values only (`one-hot(L-1)`), so its inversion is the plain inversion of the picture;
    every other row reads all valid layers (the global one included), as in sampling.
    `LayerContext.lssa_layer_mask` drops padded columns.
    """
    b, num_layers = layer_valid.shape
    rows = jnp.broadcast_to(layer_valid[:, None, :], (b, num_layers, num_layers))
    return rows.at[:, -1].set(jnp.arange(num_layers) == num_layers - 1)


@partial(jax.jit, static_argnames=("graphdef", "sched"))
def invert_layers(graphdef: nnx.GraphDef, params: nnx.State, sched: DDIMScheduler,
                  plan: SamplingPlan, ctx: LayerContext, x0: jax.Array) -> jax.Array:
    """Paper decomposition's inversion: `x0[B, h, w, c]` copied into every slot and the
    copies DDIM-inverted together (the UNet's conditional output, eq. 15's LSSA mask);
    returns each slot's inverted latent `x_T [B, L, h, w, c]`."""
    unet = nnx.merge(graphdef, params)
    b, num_layers = ctx.layer_valid.shape
    copies = jnp.broadcast_to(x0[:, None], (b, num_layers, *x0.shape[1:]))
    masked = ctx.replace(layer_mask=inversion_layer_mask(ctx.layer_valid))

    def model_fn(z: jax.Array, t: jax.Array, i: jax.Array) -> jax.Array:
        del i
        return unet(z, t, masked).astype(jnp.float32)

    x_t, _ = ddim_invert_loop(sched, plan, model_fn, copies)
    return x_t


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
    irh: bool = True,
    irh_restart: float | None = None,
    irh_stop: float | None = None,
    keep_background: bool = True,
    eta: float | None = None,
    matte: bool | None = None,
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
        always uses the conditional output (no guidance).
      irh, irh_restart, irh_stop: the paper variant's IRH (as in generation; None: the
        model's `T_H`, `T_H'`); the box variant ignores them.
      keep_background: box variant: the background outside the foregrounds' boxes is
        held to the picture (`background_keep`); False generates all of it, as the
        foregrounds are (the paper variant has no boxes and ignores it).
      eta: DDIM's stochasticity when the layers are sampled (the inversion is always
        deterministic). None: 1 in the box variant, where the global layer is pinned and
        the generated layers are sampled ancestrally, as the model's own sampler does;
        0 in the paper variant, whose global layer must follow its inverted noise back
        to the picture (`benchmarks/decomposition_settings.py` measures both).
      matte: cut each foreground's outline and colours again from the picture over the
        recovered background (`pipeline.matte.picture_matte`; the model's layer says
        where the object is), and encode the matted layers into the result's latents.
        None: on in the box variant, off in the paper variant (the paper's method).
    Returns:
      a `LayeredResult`. Box variant: its global latent is exactly the picture's
      encoding; IRH is off (the global layer is pinned, there is nothing to harmonize).
      Paper variant: the global layer is the one IRH re-harmonized.
    """
    paper = pipe.config.variant == "paper"
    layers = tuple(Layer(l) if isinstance(l, str) else l for l in layers)
    if eta is not None and not eta >= 0.0:
        raise InputError(f"eta must be >= 0, got {eta!r}")
    if not paper:  # the box variant places every foreground: no box is the whole image
        layers = tuple(Layer(l.prompt, FULL_BOX) if l.box is None else l for l in layers)
    if prompt is None:
        prompt = ", ".join([*(l.prompt for l in layers), background])
    scene = Scene(prompt=prompt, background=background, layers=layers)
    settings = resolve_settings(pipe.config, enabled=irh and paper, restart=irh_restart,
                                stop=irh_stop)
    window = (settings.restart, settings.stop) if paper else None
    pipe._check_sampling_args([scene], num_inference_steps, guidance_scale, [seed],
                              irh_window=window)
    pixels = load_image(image, pipe.config.resolution)
    if paper:
        result = _decompose_paper(pipe, scene, pixels, num_inference_steps, guidance_scale,
                                  seed, settings, caca=caca, lssa=lssa, progress=progress,
                                  eta=0.0 if eta is None else eta)
    else:
        result = _decompose_box(pipe, scene, pixels, num_inference_steps, guidance_scale,
                                seed, caca=caca, lssa=lssa, progress=progress,
                                keep_background=keep_background,
                                eta=1.0 if eta is None else eta)
    matte = not paper if matte is None else matte
    result.info["matte"] = matte
    return matted(pipe, result, pixels) if matte else result


def matted(pipe: DreamLayerPipeline, result: LayeredResult, pixels: np.ndarray
           ) -> LayeredResult:
    """`result` with its foregrounds re-cut from the picture `pixels` (`[H, W, 3]` in
    [0, 1]; `picture_matte`) and their latents re-encoded from the matted layers."""
    layers = picture_matte(to_uint8(pixels), result.background, result.layers)
    latents = result.latents
    if layers and latents is not None:
        rgba = jnp.asarray(to_float(np.stack(layers)))
        latents = latents.copy()
        latents[1:1 + len(layers)] = np.asarray(pipe.codec.encode(rgba), np.float32)
    return dataclasses.replace(result, layers=layers, latents=latents)


def _decompose_box(pipe: DreamLayerPipeline, scene: Scene, pixels: np.ndarray, steps: int,
                   guidance_scale: float, seed: int, *, caca: bool, lssa: bool,
                   progress: bool, keep_background: bool, eta: float) -> LayeredResult:
    """The box variant's decomposition (module docstring), checked arguments."""
    sched = pipe.with_scheduler("ddim")
    plan = sched.set_timesteps(steps, eta=eta)
    ctx, uncond = pipe.layer_context([scene], caca=caca, lssa=lssa)
    x0 = encode_image(pipe, pixels)
    pinned = invert_global(pipe._unet_graph, pipe._unet_params, sched, plan, ctx, x0)
    noise = pipe.initial_noise([seed], ctx.num_layers, pipe.latent_shape())
    h, w, _ = pipe.latent_shape()
    keep = background_keep(ctx, h, w, keep_background)
    x = jnp.where(keep, pinned[0][:, None], noise * sched.init_noise_sigma(plan))
    settings = IRHSettings(enabled=False, start=pipe.config.irh_start,
                           retain=pipe.config.irh_retain)
    latents = pipe.run_sampler(sched, plan, ctx, uncond, x, guidance_scale, seed, settings,
                               mode="decompose", pinned=pinned, keep=keep,
                               progress=progress)
    info: dict[str, Any] = {
        "mode": "decompose", "seed": [seed], "steps": steps,
        "keep_background": keep_background, "eta": eta,
        "guidance_scale": guidance_scale, "scheduler": sched.kind, "model": pipe.name,
        "caca": caca, "lssa": lssa, "irh": False, "irh_start": settings.start,
        "irh_retain": settings.retain}
    return pipe.to_results([scene], latents, ctx, info)[0]


def _decompose_paper(pipe: DreamLayerPipeline, scene: Scene, pixels: np.ndarray, steps: int,
                     guidance_scale: float, seed: int, settings: IRHSettings, *, caca: bool,
                     lssa: bool, progress: bool, eta: float) -> LayeredResult:
    """The paper variant's decomposition (module docstring), checked arguments."""
    sched = pipe.with_scheduler("ddim")
    plan = sched.set_timesteps(steps, eta=eta)
    ctx, uncond = pipe.layer_context([scene], caca=caca, lssa=lssa)
    x0 = encode_image(pipe, pixels)
    x = invert_layers(pipe._unet_graph, pipe._unet_params, sched, plan, ctx, x0)
    latents = pipe.run_sampler(sched, plan, ctx, uncond, x, guidance_scale, seed, settings,
                               progress=progress)
    info: dict[str, Any] = {
        "mode": "decompose", "seed": [seed], "steps": steps, "guidance_scale": guidance_scale,
        "scheduler": sched.kind, "eta": eta, "model": pipe.name, "caca": caca,
        "lssa": lssa, **settings_record(settings, "paper")}
    return pipe.to_results([scene], latents, ctx, info)[0]
