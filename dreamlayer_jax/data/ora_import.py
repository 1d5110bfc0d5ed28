"""OpenRaster files (.ora: GIMP, Krita, MyPaint) as plain RGBA layers.

Each visible `<layer>` of `stack.xml` becomes one layer on the canvas at its `x`, `y`,
its opacity folded into its alpha, its PNG converted to sRGB through its ICC profile
when it has one. A `<stack>` is a folder: its children become layers of their own
with its opacity folded in, unless they overlap under an opacity below 1 (not exact):
then the stack is composited on its own and becomes one layer named after it.
`mergedimage.png`, when present, is the file's flattened picture; `dreamlayer/scene.json`,
when present, the scene this project wrote the file from (`io/scene_record.py`).

Refused, naming the layer: a `composite-op` other than `svg:src-over` on anything
painted over other pixels (the result depends on what is below), a layer whose `src`
is not a raster image, and elements other than `<stack>` and `<layer>`.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import numpy as np

from dreamlayer_jax.data.compositing import over, to_float, to_uint8
from dreamlayer_jax.data.image_io import decode_image
from dreamlayer_jax.data.layer_stack import (
    LayerStack,
    StackLayer,
    clean_name,
    describe,
    fold_group_opacity,
    paste,
    refuse,
    scale_alpha,
)
from dreamlayer_jax.errors import DataError
from dreamlayer_jax.io.scene_record import ORA_ENTRY, read_record

NORMAL_OP = "svg:src-over"
MERGED_IMAGE = "mergedimage.png"


def _number(element: ET.Element, key: str, default: str, path: Path) -> float:
    value = element.get(key, default)
    try:
        number = float(value)
    except ValueError as exc:
        raise DataError(f"{path}: stack.xml: {key}={value!r} is not a number") from exc
    if not np.isfinite(number):
        raise DataError(f"{path}: stack.xml: {key}={value!r} is not a number")
    return number


def _merge(layers: list[StackLayer], height: int, width: int) -> np.ndarray:
    """Straight-alpha uint8 RGBA layers composited over each other onto transparency."""
    out = np.zeros((height, width, 4), np.float32)
    for layer in layers:
        out = over(to_float(layer.rgba), out)
    merged = to_uint8(out)
    merged[merged[..., 3] == 0] = 0
    return merged


class _Walk:
    def __init__(self, archive: zipfile.ZipFile, path: Path, stack: LayerStack):
        self.archive, self.path, self.stack = archive, path, stack
        self.index = 0
        self.painted = False

    def pixels(self, src: str, x: int, y: int) -> np.ndarray:
        data = self.archive.read(src)
        patch = decode_image(data, f"{self.path}:{src}", channels=4, to_srgb=True)
        canvas = np.zeros((self.stack.height, self.stack.width, 4), np.uint8)
        return paste(canvas, patch, x, y)

    def check_op(self, element: ET.Element, where: str, notes: list[str]) -> None:
        op = element.get("composite-op", NORMAL_OP)
        if op == NORMAL_OP or (element.tag == "stack" and "pass-through" in op):
            return
        if self.painted:
            raise refuse(self.path, f"{where}: composite-op {op} depends on the layers below "
                                    "and cannot be stored as a plain RGBA layer")
        notes.append(f"{where}: composite-op {op} over nothing is normal")

    def container(self, element: ET.Element, coverage: float, notes: list[str]
                  ) -> list[StackLayer]:
        out: list[StackLayer] = []
        for child in reversed(list(element)):  # stack.xml lists the top first
            self.index += 1
            kind = "group" if child.tag == "stack" else "layer"
            where = describe(kind, clean_name(child.get("name")), self.index)
            if child.get("visibility", "visible") == "hidden":
                self.stack.skipped.append(f"hidden {where}")
                continue
            if child.tag not in ("stack", "layer"):
                raise refuse(self.path, f"{where}: <{child.tag}> elements are not supported")
            opacity = min(max(_number(child, "opacity", "1", self.path), 0.0), 1.0)
            if child.tag == "stack":
                self.check_op(child, where, notes)
                out += self.group(child, where, coverage, opacity, notes)
                continue
            src = child.get("src", "")
            if not src.lower().endswith(".png"):
                raise refuse(self.path, f"{where}: source {src!r} is not a PNG raster layer")
            x = int(round(_number(child, "x", "0", self.path)))
            y = int(round(_number(child, "y", "0", self.path)))
            rgba = scale_alpha(self.pixels(src, x, y), np.float32(coverage * opacity))
            layer = StackLayer(clean_name(child.get("name")), where, rgba, None)
            if not layer.empty:  # an empty layer is skipped: its composite-op changes nothing
                self.check_op(child, where, notes)
                self.painted = True
            out.append(layer)
        return out

    def group(self, element: ET.Element, where: str, coverage: float, opacity: float,
              notes: list[str]) -> list[StackLayer]:
        children = fold_group_opacity(self, element, where, coverage, opacity, notes)
        if children is not None:
            return children
        # overlapping children under a group opacity: composite the group on its own
        sub_notes: list[str] = []
        children = self.container(element, 1.0, sub_notes)
        notes += sub_notes
        notes.append(f"{where}: merged into one layer (group opacity {round(opacity * 100)}% "
                     "over overlapping layers)")
        merged = _merge(children, self.stack.height, self.stack.width)
        layer = StackLayer(clean_name(element.get("name")), where,
                           scale_alpha(merged, np.float32(coverage * opacity)), None)
        return [layer]


def read_ora_stack(path: Path) -> LayerStack:
    """Read an OpenRaster file as a `LayerStack` (see the module docstring). Raises
    DataError for an unreadable file and RefusedError for one it cannot import
    faithfully."""
    with zipfile.ZipFile(path) as archive:
        root = ET.fromstring(archive.read("stack.xml"))
        if root.tag != "image":
            raise DataError(f"{path}: stack.xml's root is <{root.tag}>, not <image>")
        width = int(_number(root, "w", "0", path))
        height = int(_number(root, "h", "0", path))
        if width <= 0 or height <= 0:
            raise DataError(f"{path}: stack.xml gives no canvas size")
        stack = LayerStack("ora", height, width, [], None)
        walk = _Walk(archive, path, stack)
        for element in root:  # normally exactly one root <stack>
            if element.tag == "stack":
                stack.layers += walk.container(element, 1.0, stack.baked)
        if MERGED_IMAGE in archive.namelist():
            merged = decode_image(archive.read(MERGED_IMAGE), f"{path}:{MERGED_IMAGE}",
                                  channels=4, to_srgb=True)
            if merged.shape[:2] != (height, width):
                raise refuse(path, f"{MERGED_IMAGE} is {merged.shape[1]}x{merged.shape[0]}, not "
                                   f"the canvas's {width}x{height}: no flattened picture to "
                                   "check the layers against")
            stack.reference = merged
            stack.reference_note = f"the file's flattened picture ({MERGED_IMAGE})"
        else:
            stack.reference_note = f"no {MERGED_IMAGE}: the layers' own composite"
        if ORA_ENTRY in archive.namelist():
            stack.record = read_record(archive.read(ORA_ENTRY), False, stack.warnings)
    return stack
