"""Synthetic scenes for evaluation, at any resolution, from seed streams kept apart.

The model is trained on `SyntheticSceneGenerator.sample((seed, i))` with small seeds
(`TrainConfig.seed`, 0 by default). Evaluation draws from `(HELD_OUT_BASE + seed, i)` and
the fidelity classifier trains on `(CLASSIFIER_BASE + seed, i)`, so the three never share
a scene. Resolutions below the generator's minimum (16) are rendered at a multiple of the
resolution and box-filtered down (premultiplied, so edges stay right).
"""

from __future__ import annotations

import math

import numpy as np

from dreamlayer_jax.data.compositing import premultiply, to_float, to_uint8, unpremultiply
from dreamlayer_jax.data.scene import LayeredScene
from dreamlayer_jax.data.synthetic import SyntheticSceneGenerator
from dreamlayer_jax.pipeline.scene import Layer, Scene

HELD_OUT_BASE = 10_000
CLASSIFIER_BASE = 20_000
SEED_BASE = 1_000_000  # sampling seeds: SEED_BASE * (seed + 1) + scene index
MIN_RENDER = 16  # the generator's smallest resolution

Pair = tuple[Scene, LayeredScene]  # (what the pipeline is asked for, the ground truth)


def _box_filter(image: np.ndarray, factor: int) -> np.ndarray:
    """Average `factor x factor` blocks of float `[H, W, C]` -> `[H/f, W/f, C]`."""
    h, w, c = image.shape
    return image.reshape(h // factor, factor, w // factor, factor, c).mean(axis=(1, 3))


def _mask_box(alpha: np.ndarray) -> tuple[float, float, float, float]:
    rows, cols = np.flatnonzero(alpha.any(axis=1)), np.flatnonzero(alpha.any(axis=0))
    h, w = alpha.shape
    return (cols[0] / w, rows[0] / h, (cols[-1] + 1) / w, (rows[-1] + 1) / h)


def downsample_scene(scene: LayeredScene, factor: int) -> LayeredScene:
    """`scene` box-filtered by an integer `factor` (layers in premultiplied alpha); the
    boxes are re-measured from the smaller layers' alpha, `meta` is kept."""
    if factor == 1:
        return scene

    def rgb(image: np.ndarray) -> np.ndarray:
        return to_uint8(_box_filter(to_float(image), factor))

    layers = [to_uint8(unpremultiply(_box_filter(premultiply(layer), factor)))
              for layer in scene.layers]
    for layer in layers:
        layer[layer[..., 3] == 0] = 0
    return LayeredScene(
        prompt=scene.prompt, background_prompt=scene.background_prompt,
        background=rgb(scene.background), layer_prompts=list(scene.layer_prompts),
        layers=layers, boxes=[_mask_box(layer[..., 3] > 0) for layer in layers],
        composite=rgb(scene.composite), meta={**scene.meta, "resolution": scene.height // factor})


def synthetic_scenes(n: int, seed: int | tuple[int, ...], resolution: int,
                     max_foregrounds: int = 3, num_foregrounds: int | None = None
                     ) -> list[LayeredScene]:
    """`n` ground-truth scenes `sample((*seed, i))` at `resolution` pixels; with
    `num_foregrounds` every scene has exactly that many foregrounds."""
    resolution = int(resolution)
    factor = max(1, math.ceil(MIN_RENDER / resolution))
    low = high = num_foregrounds
    if num_foregrounds is None:
        low, high = 1, max_foregrounds
    generator = SyntheticSceneGenerator(resolution=resolution * factor, max_foregrounds=high,
                                        min_foregrounds=low)
    prefix = (seed,) if isinstance(seed, int) else tuple(seed)
    return [downsample_scene(generator.sample((*prefix, i)), factor) for i in range(int(n))]


def to_request(truth: LayeredScene) -> Scene:
    """What the pipeline is asked for: the generator's prompts and boxes."""
    layers = tuple(Layer(p, tuple(b)) for p, b in zip(truth.layer_prompts, truth.boxes))
    return Scene(prompt=truth.prompt, background=truth.background_prompt, layers=layers)


def held_out_scenes(n: int, seed: int = 0, resolution: int = 32, max_foregrounds: int = 3,
                    num_foregrounds: int | None = None) -> list[tuple[Scene, LayeredScene]]:
    """`n` evaluation scenes as `(request, ground truth)` pairs, drawn from the held-out
    seed stream `(HELD_OUT_BASE + seed, i)` that training never uses."""
    truths = synthetic_scenes(n, HELD_OUT_BASE + int(seed), resolution, max_foregrounds,
                              num_foregrounds)
    return [(to_request(truth), truth) for truth in truths]
