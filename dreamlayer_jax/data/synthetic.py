"""A seeded procedural generator of layered scenes with exact ground truth (DESIGN.md 5).

A scene is a background of some kind (gradient, floor, stripes, checks, noise texture)
in a named colour under a lighting condition, and 1..3 foreground shapes in named
colours and sizes placed in boxes (box = the object plus its drop shadow), overlapping
freely (paint order decides occlusion). The shadow lives in the object's own layer as
semi-transparent black pixels. The composite is the alpha-composite of the layers with
the background's light applied to the foreground pixels, so a model has to learn to
harmonize: at sunset objects turn warm, at night dark and blue; in daylight the
composite is exactly the plain alpha-composite.

    gen = SyntheticSceneGenerator(resolution=64)
    scene = gen.sample(0)           # deterministic per seed
    scene.meta["layer_attributes"]  # [{"colour": "red", "shape": "star", "size": "small"}]
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dreamlayer_jax.data.compositing import alpha_bbox, alpha_composite, to_uint8
from dreamlayer_jax.data.scene import LayeredScene
from dreamlayer_jax.data.scene_folder import write_scene_folder
from dreamlayer_jax.data.synthetic_render import (
    apply_light,
    light_layer,
    render_background,
    render_object,
    shadow_extent,
)
from dreamlayer_jax.data.synthetic_vocab import (
    BACKGROUND_KINDS,
    COLOURS,
    LIGHTS,
    SHAPES,
    SIZES,
    VOCABULARY,
    background_prompt,
    global_prompt,
    layer_prompt,
)
from dreamlayer_jax.errors import ConfigError

__all__ = ["VOCABULARY", "SyntheticSceneGenerator", "write_synthetic_folders"]

Seed = int | Sequence[int] | np.random.Generator

_PLACEMENT_TRIES = 20
_MIN_CENTRE_GAP = 0.6  # preferred centre distance, as a fraction of the radii's sum


class SyntheticSceneGenerator:
    """Samples `LayeredScene`s of `resolution x resolution` pixels.

    Args:
      resolution: image side in pixels (>= 16; 32, 64 and larger are the usual).
      max_foregrounds, min_foregrounds: the number of foreground objects is drawn
        uniformly in `[min_foregrounds, max_foregrounds]`.
      shadows: draw the soft drop shadows (on by default).
      lights: the lighting conditions to draw from (default: all of `LIGHTS`).
    """

    def __init__(
        self,
        resolution: int = 64,
        max_foregrounds: int = 3,
        min_foregrounds: int = 1,
        shadows: bool = True,
        lights: Sequence[str] | None = None,
    ) -> None:
        if int(resolution) < 16:
            raise ConfigError(f"resolution must be at least 16, got {resolution}")
        if not 0 <= int(min_foregrounds) <= int(max_foregrounds):
            raise ConfigError(
                "need 0 <= min_foregrounds <= max_foregrounds, got "
                f"{min_foregrounds} and {max_foregrounds}"
            )
        lights = tuple(LIGHTS) if lights is None else tuple(lights)
        unknown = [light for light in lights if light not in LIGHTS]
        if unknown or not lights:
            raise ConfigError(f"lights must be a non-empty subset of {list(LIGHTS)}, got {lights}")
        self.resolution = int(resolution)
        self.max_foregrounds = int(max_foregrounds)
        self.min_foregrounds = int(min_foregrounds)
        self.shadows = bool(shadows)
        self.lights = lights

    def sample(self, seed: Seed) -> LayeredScene:
        """One scene, a pure function of `seed` (an int, a sequence of ints such as
        `(seed, index)`, or a numpy Generator, which is advanced)."""
        if isinstance(seed, np.random.Generator):
            rng, seed_meta = seed, None
        else:
            rng = np.random.default_rng(seed)
            seed_meta = int(seed) if isinstance(seed, int | np.integer) else [int(s) for s in seed]
        size = self.resolution
        colour_names = list(COLOURS)

        kind = str(rng.choice(BACKGROUND_KINDS))
        bg_colour = str(rng.choice(colour_names))
        light = str(rng.choice(self.lights))
        unlit = render_background(rng, size, kind, self._jitter(rng, bg_colour))
        background = to_uint8(apply_light(unlit, light))

        count = int(rng.integers(self.min_foregrounds, self.max_foregrounds + 1))
        object_colours = [name for name in colour_names if name != bg_colour]
        attributes: list[dict[str, str]] = []
        layers: list[np.ndarray] = []
        placed: list[tuple[float, float, float]] = []
        for _ in range(count):
            shape = str(rng.choice(SHAPES))
            colour = str(rng.choice(object_colours))
            size_name = str(rng.choice(list(SIZES)))
            radius = float(rng.uniform(*SIZES[size_name])) * size
            cx, cy = self._place(rng, radius, placed)
            placed.append((cx, cy, radius))
            angle = 0.0 if shape in ("circle", "ring") else float(rng.uniform(-0.45, 0.45))
            layers.append(
                render_object(
                    size,
                    shape,
                    self._jitter(rng, colour),
                    (cx, cy),
                    radius,
                    angle,
                    shadow=self.shadows,
                )
            )
            attributes.append({"colour": colour, "shape": shape, "size": size_name})

        boxes = []
        for layer in layers:
            x0, y0, x1, y1 = alpha_bbox(layer[..., 3])
            boxes.append((x0 / size, y0 / size, x1 / size, y1 / size))
        composite = alpha_composite(background, [light_layer(layer, light) for layer in layers])

        prompts = [layer_prompt(a["size"], a["colour"], a["shape"]) for a in attributes]
        bg_prompt = background_prompt(kind, bg_colour, light)
        meta: dict[str, Any] = {
            "source": "synthetic",
            "resolution": size,
            "background_attributes": {"kind": kind, "colour": bg_colour, "light": light},
            "layer_attributes": attributes,
        }
        if seed_meta is not None:
            meta["seed"] = seed_meta
        return LayeredScene(
            prompt=global_prompt(prompts, bg_prompt),
            background_prompt=bg_prompt,
            background=background,
            layer_prompts=prompts,
            layers=layers,
            boxes=boxes,
            composite=composite,
            meta=meta,
        )

    @staticmethod
    def _jitter(rng: np.random.Generator, colour: str) -> np.ndarray:
        """The named colour with a small per-sample variation, float32 `[3]`."""
        base = np.asarray(COLOURS[colour], dtype=np.float32)
        return np.clip(base + rng.uniform(-0.03, 0.03, size=3), 0.0, 1.0).astype(np.float32)

    def _place(
        self,
        rng: np.random.Generator,
        radius: float,
        placed: list[tuple[float, float, float]],
    ) -> tuple[float, float]:
        """A centre keeping the object and its shadow inside the image, preferring
        spots that do not hide most of an earlier object (overlap stays allowed)."""
        reach_x, reach_y = shadow_extent(radius) if self.shadows else (radius, radius)
        low = radius + 1.0
        high_x, high_y = self.resolution - reach_x - 1.0, self.resolution - reach_y - 1.0
        centre = (low, low)
        for _ in range(_PLACEMENT_TRIES):
            centre = (float(rng.uniform(low, high_x)), float(rng.uniform(low, high_y)))
            if all(
                math.dist(centre, (px, py)) >= _MIN_CENTRE_GAP * (radius + pr)
                for px, py, pr in placed
            ):
                break
        return centre


def write_synthetic_folders(
    root: str | os.PathLike,
    n: int,
    seed: int,
    resolution: int = 64,
    **generator_kwargs: Any,
) -> list[Path]:
    """Write `n` synthetic scenes as scene folders `root/scene_000000 ...`.

    Scene `i` is `SyntheticSceneGenerator(resolution, **generator_kwargs).sample((seed, i))`,
    so any one scene can be regenerated alone. Returns the folders written.
    """
    generator = SyntheticSceneGenerator(resolution=resolution, **generator_kwargs)
    root = Path(root)
    folders = []
    for index in range(int(n)):
        scene = generator.sample((int(seed), index))
        folders.append(write_scene_folder(scene, root / f"scene_{index:06d}", overwrite=True))
    return folders
