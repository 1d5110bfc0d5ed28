"""The padded training batch: every scene laid out in `L_max` fixed layer slots.

Slots (DESIGN.md section 1): slot `0` is the background, slots `1 .. L_max-2` the
foregrounds in paint order, slot `L_max-1` the global layer (the composite). A scene
with `K < L_max - 2` foregrounds leaves slots `K+1 .. L_max-2` as padding.

    TrainBatch (a dict of numpy arrays and string lists)
      pixels       float32 [B, L, H, W, 4]  straight RGBA in [0, 1]; background and global
                                            alpha = 1; padded slots all zero
      layer_valid  bool [B, L]              background, foregrounds and global True
      boxes        float32 [B, L, 4]        (x0, y0, x1, y1) in [0, 1]; the full box
                                            (0, 0, 1, 1) for background, global, padding
      prompts      list of B lists of L str ("" for padded slots and dropped prompts)
      scene_ids    list of B str

Too many foregrounds: `pad_example` raises DataError naming the count rather than
truncating. Dropping foregrounds would leave objects in the global layer (the
composite) that no layer holds, a silently wrong training target; build the dataset
with `max_foregrounds <= L_max - 2` instead (`dataset_metadata` reports the largest K).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

import numpy as np

from dreamlayer_jax.data.compositing import to_float
from dreamlayer_jax.errors import ConfigError, DataError

BACKGROUND_SLOT = 0
FULL_BOX = (0.0, 0.0, 1.0, 1.0)


class PaddedExample(TypedDict):
    """One scene in `L` slots: the `TrainBatch` layout without the batch axis."""

    pixels: np.ndarray  # float32 [L, H, W, 4]
    layer_valid: np.ndarray  # bool [L]
    boxes: np.ndarray  # float32 [L, 4]
    prompts: list[str]  # L strings
    scene_id: str


class TrainBatch(TypedDict):
    """A batch of `B` padded scenes (see the module docstring for the layout)."""

    pixels: np.ndarray  # float32 [B, L, H, W, 4]
    layer_valid: np.ndarray  # bool [B, L]
    boxes: np.ndarray  # float32 [B, L, 4]
    prompts: list[list[str]]  # B lists of L strings
    scene_ids: list[str]


def global_slot(max_layers: int) -> int:
    """The global layer's slot, `L_max - 1`."""
    return int(max_layers) - 1


def max_foregrounds(max_layers: int) -> int:
    """How many foregrounds fit in `max_layers` slots: `L_max - 2`."""
    return int(max_layers) - 2


def check_max_layers(max_layers: int) -> int:
    """`max_layers` as an int; ConfigError unless it holds background and global (>= 2)."""
    if isinstance(max_layers, bool) or int(max_layers) != max_layers or max_layers < 2:
        raise ConfigError(
            f"max_layers must be an integer >= 2 (background + global), got {max_layers!r}"
        )
    return int(max_layers)


def _opaque(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB `[H, W, 3]` -> float32 RGBA `[H, W, 4]` with alpha 1."""
    rgb = to_float(rgb)
    return np.concatenate([rgb, np.ones_like(rgb[..., :1])], axis=-1)


def pad_example(example: Mapping[str, Any], max_layers: int) -> PaddedExample:
    """Lay a `SceneExample` out in `max_layers` slots (module docstring).

    Raises DataError naming the scene and its foreground count when it has more than
    `max_layers - 2` foregrounds, or when its arrays disagree in shape.
    """
    max_layers = check_max_layers(max_layers)
    scene_id = str(example.get("scene_id", "?"))
    background = np.asarray(example["background"])
    layers = np.asarray(example["layers"])
    boxes = np.asarray(example["boxes"], np.float32).reshape(-1, 4)
    layer_prompts = list(example["layer_prompts"])
    count = layers.shape[0] if layers.ndim == 4 else -1
    height, width = background.shape[:2]
    if count < 0 or layers.shape[1:] != (height, width, 4):
        raise DataError(
            f"scene {scene_id}: layers must be [K, {height}, {width}, 4], got {list(layers.shape)}"
        )
    if not len(boxes) == len(layer_prompts) == count:
        raise DataError(
            f"scene {scene_id}: {count} layers, {len(boxes)} boxes and {len(layer_prompts)} "
            "layer prompts; they must match"
        )
    if count > max_foregrounds(max_layers):
        raise DataError(
            f"scene {scene_id}: {count} foregrounds do not fit max_layers={max_layers} "
            f"(room for {max_foregrounds(max_layers)}: slot 0 background, slot "
            f"{global_slot(max_layers)} global); raise max_layers or rebuild the dataset "
            f"with max_foregrounds <= {max_foregrounds(max_layers)}"
        )

    pixels = np.zeros((max_layers, height, width, 4), np.float32)
    pixels[BACKGROUND_SLOT] = _opaque(background)
    pixels[1 : 1 + count] = to_float(layers)
    pixels[global_slot(max_layers)] = _opaque(np.asarray(example["composite"]))

    valid = np.zeros((max_layers,), bool)
    valid[: 1 + count] = True
    valid[global_slot(max_layers)] = True

    slot_boxes = np.tile(np.asarray(FULL_BOX, np.float32), (max_layers, 1))
    slot_boxes[1 : 1 + count] = boxes

    prompts = [""] * max_layers
    prompts[BACKGROUND_SLOT] = str(example["background_prompt"])
    prompts[1 : 1 + count] = [str(p) for p in layer_prompts]
    prompts[global_slot(max_layers)] = str(example["prompt"])
    return PaddedExample(
        pixels=pixels, layer_valid=valid, boxes=slot_boxes, prompts=prompts, scene_id=scene_id
    )


def collate(examples: Sequence[PaddedExample]) -> TrainBatch:
    """Stack padded examples into a `TrainBatch`; DataError if their sizes differ."""
    if not examples:
        raise DataError("cannot collate an empty list of examples")
    shapes = {tuple(e["pixels"].shape) for e in examples}
    if len(shapes) > 1:
        found = sorted({f"{e['scene_id']}: {list(e['pixels'].shape)}" for e in examples})
        raise DataError(
            f"scenes in one batch need the same [L, H, W, 4] shape; got {found[:4]} "
            "(build the folder dataset with resolution=... to keep one size)"
        )
    return TrainBatch(
        pixels=np.stack([e["pixels"] for e in examples]),
        layer_valid=np.stack([e["layer_valid"] for e in examples]),
        boxes=np.stack([e["boxes"] for e in examples]),
        prompts=[list(e["prompts"]) for e in examples],
        scene_ids=[e["scene_id"] for e in examples],
    )
