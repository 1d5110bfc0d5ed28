"""Where an imported file's prompts and boxes come from.

Each source overrides what the one before it gave:

1. the layer names (control characters removed: `clean_name`), and each foreground's
   box, its alpha's bounding box in `[0, 1]`;
2. the scene the file carries when this project wrote it (`io/scene_record.py`), while
   its layers are still those written (same names, same order; empty layers left out):
   the exact prompts, the global prompt and each box, a box only while its layer still
   covers the pixels it covered when written;
3. a sidecar JSON file: `prompts_json` if given, else `<stem>.json` beside the file,
   else `scene.json` beside it (a result folder's), which is skipped when the embedded
   scene applies (it is the same scene, and lists empty layers too):

       {"prompt": "a cat on a sofa", "background": "a sofa",
        "layers": ["a cat", {"prompt": "a hat", "box": [0.1, 0.1, 0.4, 0.3]}]}

   Every field is optional; "background" may be `{"prompt": ...}` as in scene.json,
   and "layers" must list one entry per non-empty foreground.

A layer left without a prompt refuses the file. With no global prompt given, it is
composed from the layers: `"<layer 1> and <layer 2> in front of <background>"`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dreamlayer_jax.data.compositing import alpha_bbox
from dreamlayer_jax.data.layer_stack import FLAT_PICTURE, StackLayer, clean_name, refuse
from dreamlayer_jax.data.scene import Box, validate_box
from dreamlayer_jax.data.scene_folder import SCENE_JSON
from dreamlayer_jax.data.synthetic_vocab import global_prompt
from dreamlayer_jax.errors import DataError

EMBEDDED = "embedded scene"
NAMES = "layer names"


@dataclass
class LayerPrompts:
    """The prompts of an imported file's layers (background first, then the foregrounds
    in paint order), their boxes `(x0, y0, x1, y1)` in `[0, 1]`, and `sources`: what
    gave them, in the order applied (`"layer names"`, `"embedded scene"`, a sidecar's
    path)."""

    prompt: str | None
    background: str
    layers: list[str]
    boxes: list[Box]
    sources: list[str]


def _sidecar(path: Path, prompts_json: str | os.PathLike | None) -> tuple[Path | None, bool]:
    """The sidecar to read, and whether it is a `scene.json` found beside the file."""
    if prompts_json is not None:
        return Path(prompts_json), False
    if path.with_suffix(".json").is_file():
        return path.with_suffix(".json"), False
    beside = path.parent / SCENE_JSON
    return (beside, True) if beside.is_file() else (None, False)


def _read_sidecar(sidecar: Path) -> dict[str, Any]:
    try:
        spec = json.loads(sidecar.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataError(f"{sidecar}: prompts file not found") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{sidecar}: not a readable JSON prompts file ({exc})") from exc
    if not isinstance(spec, dict):
        raise DataError(f"{sidecar}: must hold a JSON object")
    return spec


def _prompt_of(value: Any, where: Any, name: str) -> str:
    if isinstance(value, dict):
        value = value.get("prompt")
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{name}' must be a string (or {{'prompt': str}})")
    return value


def _apply(spec: dict[str, Any], where: Any, into: LayerPrompts, file_name: str) -> None:
    """Override `into` with what `spec` (the sidecar layout) gives."""
    if "background" in spec:
        into.background = _prompt_of(spec["background"], where, "background")
    if "layers" in spec:
        listed = spec["layers"]
        if not isinstance(listed, list) or len(listed) != len(into.layers):
            raise DataError(f"{where}: field 'layers' must list {len(into.layers)} prompts, "
                            f"one per foreground layer of {file_name}")
        for index, value in enumerate(listed):
            into.layers[index] = _prompt_of(value, where, f"layers[{index}]")
            if isinstance(value, dict) and value.get("box") is not None:
                into.boxes[index] = validate_box(value["box"], f"{where}: field "
                                                               f"'layers[{index}].box'")
    if "prompt" in spec:
        into.prompt = _prompt_of(spec["prompt"], where, "prompt")


def _embedded(record: dict[str, Any], layers: list[StackLayer],
              notes: list[str]) -> dict[str, Any] | None:
    """The embedded scene as a sidecar-layout spec, if the file's layers are those it
    was written with; None (and a note) otherwise."""
    entries = [record["background"]] + [e for e in record["layers"] if e.get("area") is not None]
    written = [clean_name(entry["name"]) for entry in entries]
    if written != [layer.name for layer in layers]:
        notes.append(f"embedded scene not used: the file's layers {[l.name for l in layers]} "
                     f"are not those written {written}; prompts from the layer names")
        return None
    listed = []
    for entry, layer in zip(entries[1:], layers[1:]):
        item = {"prompt": entry["prompt"]}
        if entry.get("box") is not None:
            if list(alpha_bbox(layer.rgba[..., 3]) or ()) == entry.get("area"):
                item["box"] = entry["box"]
            else:
                notes.append(f"{layer.where} moved or repainted since written: its box is "
                             "its pixels' bounds")
        listed.append(item)
    return {"prompt": record["prompt"], "background": entries[0]["prompt"], "layers": listed}


def layer_prompts(path: Path, layers: list[StackLayer], record: dict[str, Any] | None,
                  prompts_json: str | os.PathLike | None, notes: list[str]) -> LayerPrompts:
    """The prompts and boxes of a file's non-empty `layers` (background first; see the
    module docstring); notes on the embedded scene go to `notes`. Raises DataError for
    a bad sidecar, RefusedError when a layer is left without a prompt."""
    height, width = layers[0].rgba.shape[:2]
    boxes = []
    for layer in layers[1:]:
        x0, y0, x1, y1 = alpha_bbox(layer.rgba[..., 3])
        boxes.append((x0 / width, y0 / height, x1 / width, y1 / height))
    out = LayerPrompts(None, layers[0].name, [layer.name for layer in layers[1:]], boxes,
                       [NAMES])
    embedded = None if record is None else _embedded(record, layers, notes)
    if embedded is not None:
        _apply(embedded, f"{path}: embedded scene", out, path.name)
        out.sources.append(EMBEDDED)
    sidecar, beside = _sidecar(path, prompts_json)
    if sidecar is not None and not (beside and embedded is not None):
        _apply(_read_sidecar(sidecar), sidecar, out, path.name)
        out.sources.append(str(sidecar))
    for layer, text in zip(layers, [out.background, *out.layers]):
        if not text.strip():
            name = path.with_suffix(".json").name
            if layer.where == FLAT_PICTURE:
                raise refuse(path, f"a flat picture (no layers) has no layer name to use as "
                                   f"its prompt: give it as \"background\" in {name}")
            raise refuse(path, f"{layer.where} has no name to use as its prompt: name it, or "
                               f"give the prompts in {name}")
    if out.prompt is None:
        out.prompt = global_prompt(out.layers, out.background)
    return out
