"""The in-memory layered scene with pixels, and the box check shared with the pipeline.

A `LayeredScene` is what the data readers produce, what training consumes and what the
pipeline returns: an opaque RGB background, `K >= 0` straight-alpha RGBA foregrounds in
paint order (each with its prompt and its box), and the finished RGB composite.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dreamlayer_jax.data.compositing import alpha_composite
from dreamlayer_jax.errors import DataError, DreamLayerError

Box = tuple[float, float, float, float]


def validate_box(box: Any, name: str, error: type[DreamLayerError] = DataError) -> Box:
    """Check a box `(x0, y0, x1, y1)` in `[0, 1]` with positive area; return it as floats.

    Raises `error` (DataError by default; the pipeline passes InputError) whose message
    names `name`.
    """
    if isinstance(box, (str, bytes)) or not isinstance(box, Sequence | np.ndarray):
        raise error(f"{name}: a box must be 4 numbers (x0, y0, x1, y1), got {box!r}")
    if len(box) != 4:
        raise error(f"{name}: a box must be 4 numbers (x0, y0, x1, y1), got {len(box)} values")
    try:
        x0, y0, x1, y1 = (float(v) for v in box)
    except (TypeError, ValueError) as exc:
        raise error(f"{name}: box values must be numbers, got {box!r}") from exc
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise error(f"{name}: box values must be finite, got {box!r}")
    if not all(0.0 <= v <= 1.0 for v in (x0, y0, x1, y1)):
        raise error(f"{name}: box values must lie in [0, 1], got {box!r}")
    if not (x0 < x1 and y0 < y1):
        raise error(f"{name}: box needs x0 < x1 and y0 < y1 (positive area), got {box!r}")
    return (x0, y0, x1, y1)


def _check_image(image: Any, name: str, channels: int) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise DataError(f"{name}: expected a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise DataError(f"{name}: expected dtype uint8, got {image.dtype}")
    if image.ndim != 3 or image.shape[-1] != channels or 0 in image.shape:
        raise DataError(f"{name}: expected shape [H, W, {channels}], got {list(image.shape)}")
    return image


@dataclass(frozen=True, eq=False)  # arrays have no single truth value: compare fields
class LayeredScene:
    """One scene: background `uint8 [H, W, 3]`, foregrounds `uint8 [H, W, 4]` (straight
    alpha, paint order) with their prompts and boxes `(x0, y0, x1, y1)` in `[0, 1]`, the
    composite `uint8 [H, W, 3]`, and free-form `meta` (ground-truth attributes, source).

    Validates itself on construction and raises DataError naming the faulty field.
    """

    prompt: str
    background_prompt: str
    background: np.ndarray
    layer_prompts: list[str]
    layers: list[np.ndarray]
    boxes: list[Box]
    composite: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("prompt", "background_prompt"):
            if not isinstance(getattr(self, name), str):
                raise DataError(f"{name}: expected a string, got {getattr(self, name)!r}")
        background = _check_image(self.background, "background", 3)
        size = background.shape[:2]
        composite = _check_image(self.composite, "composite", 3)
        if composite.shape[:2] != size:
            raise DataError(
                f"composite: size {list(composite.shape[:2])} differs from the background's "
                f"{list(size)}"
            )
        layers, prompts = list(self.layers), list(self.layer_prompts)
        boxes = list(self.boxes)
        if not len(layers) == len(prompts) == len(boxes):
            raise DataError(
                f"layers: {len(layers)} layers, {len(prompts)} layer_prompts and {len(boxes)} "
                "boxes; the three must have the same length"
            )
        for index, (layer, prompt) in enumerate(zip(layers, prompts)):
            _check_image(layer, f"layers[{index}]", 4)
            if layer.shape[:2] != size:
                raise DataError(
                    f"layers[{index}]: size {list(layer.shape[:2])} differs from the "
                    f"background's {list(size)}"
                )
            if not isinstance(prompt, str):
                raise DataError(f"layer_prompts[{index}]: expected a string, got {prompt!r}")
        boxes = [validate_box(box, f"boxes[{i}]") for i, box in enumerate(boxes)]
        if not isinstance(self.meta, dict):
            raise DataError(f"meta: expected a dict, got {type(self.meta).__name__}")
        object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "layer_prompts", prompts)
        object.__setattr__(self, "boxes", boxes)

    @property
    def height(self) -> int:
        return int(self.background.shape[0])

    @property
    def width(self) -> int:
        return int(self.background.shape[1])

    @property
    def num_foregrounds(self) -> int:
        """K, the number of foreground layers (the background and composite not counted)."""
        return len(self.layers)

    def flatten(self) -> np.ndarray:
        """The plain alpha-composite of background and foregrounds, uint8 `[H, W, 3]`."""
        return alpha_composite(self.background, self.layers)

    def box_pixels(self, index: int) -> tuple[int, int, int, int]:
        """Foreground `index`'s box in pixels `(x0, y0, x1, y1)`, end exclusive, rounded out."""
        x0, y0, x1, y1 = self.boxes[index]
        return (
            int(math.floor(x0 * self.width + 1e-6)),
            int(math.floor(y0 * self.height + 1e-6)),
            int(math.ceil(x1 * self.width - 1e-6)),
            int(math.ceil(y1 * self.height - 1e-6)),
        )
