"""The flat example dict a scene becomes in the dataset, and the record stored on disk.

A `SceneExample` is what `load_source(...)[i]` returns and what `pad_example` reads:
numpy arrays with the foregrounds stacked along a leading `K` axis (`K` varies per
scene; padding to `L_max` happens in the input pipeline, not on disk):

    scene_id           str                 unique within its split (folder name, "train/000007")
    prompt             str                 the global prompt
    background_prompt  str
    background         uint8 [H, W, 3]
    layers             uint8 [K, H, W, 4]  straight alpha, paint order
    boxes              float32 [K, 4]      (x0, y0, x1, y1) in [0, 1]
    layer_prompts      list[str]           K prompts
    composite          uint8 [H, W, 3]     the finished picture (the global layer's target)
    meta               dict                ground-truth attributes, source (JSON-able)

The stored record is the same with `meta` as JSON text and `num_foregrounds` (`K`) added,
so a reader can count layers without decoding pixels. Strings come back from tfds as
UTF-8 bytes; `record_to_example` decodes them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, TypedDict

import numpy as np

from dreamlayer_jax.data.scene import LayeredScene
from dreamlayer_jax.errors import DataError


class SceneExample(TypedDict):
    """One scene as numpy arrays and strings (see the module docstring for shapes)."""

    scene_id: str
    prompt: str
    background_prompt: str
    background: np.ndarray
    layers: np.ndarray
    boxes: np.ndarray
    layer_prompts: list[str]
    composite: np.ndarray
    meta: dict[str, Any]


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def scene_to_example(scene: LayeredScene, scene_id: str) -> SceneExample:
    """`scene` as a `SceneExample` (foregrounds stacked to `[K, H, W, 4]`)."""
    height, width = scene.height, scene.width
    if scene.layers:
        layers = np.stack(scene.layers).astype(np.uint8)
    else:
        layers = np.zeros((0, height, width, 4), np.uint8)
    return SceneExample(
        scene_id=str(scene_id),
        prompt=scene.prompt,
        background_prompt=scene.background_prompt,
        background=np.asarray(scene.background, np.uint8),
        layers=layers,
        boxes=np.asarray(scene.boxes, np.float32).reshape(-1, 4),
        layer_prompts=list(scene.layer_prompts),
        composite=np.asarray(scene.composite, np.uint8),
        meta=dict(scene.meta),
    )


def example_to_scene(example: Mapping[str, Any]) -> LayeredScene:
    """The `LayeredScene` of a `SceneExample` (validated; DataError names the field)."""
    layers = np.asarray(example["layers"])
    return LayeredScene(
        prompt=example["prompt"],
        background_prompt=example["background_prompt"],
        background=np.asarray(example["background"]),
        layer_prompts=list(example["layer_prompts"]),
        layers=[layers[k] for k in range(layers.shape[0])],
        boxes=[tuple(float(v) for v in box) for box in np.asarray(example["boxes"])],
        composite=np.asarray(example["composite"]),
        meta=dict(example.get("meta", {})),
    )


def example_to_record(example: SceneExample) -> dict[str, Any]:
    """The dict written by the tfds builder: `meta` as JSON text, `num_foregrounds` added."""
    record: dict[str, Any] = dict(example)
    try:
        record["meta"] = json.dumps(example["meta"], ensure_ascii=False, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise DataError(f"scene {example['scene_id']}: meta is not JSON-able ({exc})") from exc
    record["num_foregrounds"] = np.int32(example["layers"].shape[0])
    return record


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def record_to_example(record: Mapping[str, Any]) -> SceneExample:
    """A stored record (as tfds decodes it: strings as bytes) back to a `SceneExample`."""
    return SceneExample(
        scene_id=_text(record["scene_id"]),
        prompt=_text(record["prompt"]),
        background_prompt=_text(record["background_prompt"]),
        background=np.asarray(record["background"], np.uint8),
        layers=np.asarray(record["layers"], np.uint8),
        boxes=np.asarray(record["boxes"], np.float32).reshape(-1, 4),
        layer_prompts=[_text(p) for p in record["layer_prompts"]],
        composite=np.asarray(record["composite"], np.uint8),
        meta=json.loads(_text(record["meta"])),
    )
