"""What the PSD and ORA readers hand to the importer: a file as plain RGBA layers.

A reader turns a layered file into a `LayerStack`: the visible layers, bottom first,
each already *baked* into one straight-alpha uint8 RGBA picture on the canvas (its
opacity, masks, clipped layers... folded in, in sRGB), the file's own flattened
picture to check them against, and notes on what was baked or skipped. Whatever a
reader cannot bake exactly it refuses with `refuse`, naming the layer and the feature.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dreamlayer_jax.errors import DataError

FLAT_PICTURE = "the flattened picture"  # `where` of the one layer of a layer-less file


class RefusedError(DataError):
    """A readable file that cannot be imported faithfully (a feature plain RGBA layers
    cannot hold, a layer without a prompt...): one line naming the layer and why."""


def refuse(path: Any, message: str) -> RefusedError:
    """The error to raise for a refused file: `<path>: <message>`."""
    return RefusedError(f"{path}: {message}")


def clean_name(name: Any) -> str:
    """A layer name as a prompt: control characters (NUL, tabs, newlines...) removed,
    runs of spaces collapsed, ends stripped. `''` when nothing is left."""
    kept = []
    for ch in str(name or ""):
        if ch in "\t\n\r\v\f":
            kept.append(" ")
        elif unicodedata.category(ch) != "Cc":
            kept.append(ch)
    return " ".join("".join(kept).split())


def describe(kind: str, name: str, index: int) -> str:
    """`layer 'sky'`, or `layer 3 (unnamed)` (index counted from the bottom, from 1)."""
    return f"{kind} '{name}'" if name else f"{kind} {index} (unnamed)"


@dataclass
class StackLayer:
    """One visible layer of a file, baked: `rgba` is uint8 `[H, W, 4]`, straight alpha,
    on the whole canvas. `where` names it in messages; `area` is the `(x0, y0, x1, y1)`
    the file says it covers (for naming the layer under a pixel)."""

    name: str
    where: str
    rgba: np.ndarray
    area: tuple[int, int, int, int] | None = None

    @property
    def empty(self) -> bool:
        return not bool(np.any(self.rgba[..., 3]))


@dataclass
class LayerStack:
    """A layered file as plain RGBA layers (bottom first) and its flattened picture.

    `reference` is the file's own flattened picture, uint8 RGBA `[H, W, 4]` (None when
    the file stores none: the layers' own composite is then all there is);
    `reference_note` says where it came from. `baked` and `skipped` are short notes
    for the report (`"layer 'cat': layer mask"`, `"hidden layer 'sketch'"`); `warnings`
    holds what the file's parser complained about. `record` is the scene the file
    carries when this project wrote it (`io/scene_record.py`), else None.
    """

    kind: str
    height: int
    width: int
    layers: list[StackLayer]
    reference: np.ndarray | None
    reference_note: str = ""
    baked: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    empty_layers: int = 0
    record: dict[str, Any] | None = None


def paste(canvas: np.ndarray, patch: np.ndarray, left: int, top: int) -> np.ndarray:
    """Copy `patch` into `canvas` (in place) with its top-left corner at `(left, top)`,
    cutting what sticks out. Works for `[H, W]` and `[H, W, C]` arrays."""
    height, width = canvas.shape[:2]
    h, w = patch.shape[:2]
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(left + w, width), min(top + h, height)
    if x0 < x1 and y0 < y1:
        canvas[y0:y1, x0:x1] = patch[y0 - top : y1 - top, x0 - left : x1 - left]
    return canvas


def to_rgba8(color: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Straight float sRGB `[H, W, 3]` and alpha `[H, W]` in [0, 1] -> uint8 RGBA, with
    the colour of fully transparent pixels set to 0."""
    rgba = np.concatenate([np.asarray(color, np.float32), np.asarray(alpha, np.float32)[..., None]],
                          axis=-1)
    out = np.clip(np.rint(rgba * 255.0), 0, 255).astype(np.uint8)
    out[out[..., 3] == 0] = 0
    return out


def scale_alpha(rgba: np.ndarray, coverage: float | np.ndarray) -> np.ndarray:
    """`rgba` (uint8) with its alpha multiplied by `coverage` (a scalar or `[H, W]`)."""
    if np.isscalar(coverage) and coverage == 1.0:
        return rgba
    out = rgba.copy()
    out[..., 3] = np.rint(out[..., 3] * np.asarray(coverage, np.float32)).astype(np.uint8)
    out[out[..., 3] == 0] = 0
    return out


def overlapping(layers: list[StackLayer]) -> bool:
    """Whether two of `layers` have a visible pixel at the same place."""
    if len(layers) < 2:
        return False
    count = np.zeros(layers[0].rgba.shape[:2], np.int32)
    for layer in layers:
        count += layer.rgba[..., 3] > 0
    return bool(np.any(count > 1))


def fold_group_opacity(reader: Any, group: Any, where: str, coverage: float, opacity: float,
                       notes: list[str]) -> list[StackLayer] | None:
    """A group's opacity folded into its layers, where that is exact (no two of them
    overlap): its children with `coverage * opacity`; None otherwise, with `reader`'s
    walk state (`index`, `painted`, `stack.skipped`) rolled back so that the group can be
    read again as one merged layer. `reader` is a PSD or ORA stack reader: its
    `container(group, coverage, notes)` reads a group's children."""
    saved = (reader.index, reader.painted, len(reader.stack.skipped))
    sub_notes: list[str] = []
    children = reader.container(group, coverage * opacity, sub_notes)
    if opacity == 1.0 or not overlapping(children):
        notes += sub_notes
        if opacity != 1.0 and children:
            notes.append(f"{where}: group opacity {round(opacity * 100)}% folded into its "
                         "layers")
        return children
    reader.index, reader.painted = saved[0], saved[1]
    del reader.stack.skipped[saved[2]:]
    return None
