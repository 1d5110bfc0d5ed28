"""Writing layered scenes as Photoshop (.psd) and OpenRaster (.ora) files.

Both writers take the same arguments: an opaque background `uint8 [H, W, 3]`, the
foregrounds `uint8 [H, W, 4]` (straight alpha) in paint order, and `names`: either one
per layer *including the background* (`names[0]` names the background, `names[k + 1]`
the foreground `layers[k]`), or one per foreground only, the background then being
named "background". Foregrounds are stored cropped to their alpha's bounding box
at the right offset, as painting programs do.

The file's flattened picture (PSD: the merged image; ORA: `mergedimage.png`) is the
rendering of the visible stack, as every reader expects. A model's own `global_layer`
(its finished picture, which need not equal the stack) goes in as one more layer on
top, hidden and named `GLOBAL_LAYER_NAME`, so that nothing is lost and the two formats
agree. Given `scene` (the `scene.json` layout), the file also carries the scene itself
(`io/scene_record.py`: every prompt, box, the global prompt and the paint order), so that
importing it restores the exact scene whatever the layers are named. Files are written
atomically (to a temporary file next to the target, then renamed) with the permissions a
plain `open()` would give (`0o666` less the umask).
"""

from __future__ import annotations

import io
import os
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from psd_tools import PSDImage
from psd_tools.api.layers import PixelLayer
from psd_tools.constants import Resource
from psd_tools.psd.image_resources import ImageResource

from dreamlayer_jax.data.compositing import alpha_bbox, alpha_composite
from dreamlayer_jax.data.image_io import encode_png
from dreamlayer_jax.errors import InputError
from dreamlayer_jax.io.atomic import write_atomically
from dreamlayer_jax.io.scene_record import ORA_ENTRY, make_record, record_json, record_xmp

DEFAULT_BACKGROUND_NAME = "background"
GLOBAL_LAYER_NAME = "global layer (generated picture, hidden)"
PSD_MAX_NAME = 255
ORA_THUMBNAIL = 256


def _check_inputs(
    background: np.ndarray, layers: Sequence[np.ndarray], names: Sequence[str]
) -> tuple[int, int, list[str]]:
    """Check the arrays; return the canvas size and the names, background's first."""
    background = np.asarray(background)
    if background.dtype != np.uint8 or background.ndim != 3 or background.shape[-1] != 3:
        raise InputError(
            f"background must be uint8 [H, W, 3], got {background.dtype} {list(background.shape)}"
        )
    height, width = background.shape[:2]
    for index, layer in enumerate(layers):
        if layer.dtype != np.uint8 or layer.shape != (height, width, 4):
            raise InputError(
                f"layers[{index}] must be uint8 [{height}, {width}, 4], got "
                f"{layer.dtype} {list(layer.shape)}"
            )
    names = [str(name) for name in names]
    if len(names) == len(layers):
        names = [DEFAULT_BACKGROUND_NAME] + names
    if len(names) != len(layers) + 1:
        raise InputError(
            f"names must name the {len(layers)} layers, optionally preceded by the "
            f"background's name, got {len(names)} names"
        )
    return height, width, names


def _crop(layer: np.ndarray) -> tuple[np.ndarray, int, int]:
    """The layer cut to its alpha's bounding box, with its `(left, top)`; whole if empty."""
    box = alpha_bbox(layer[..., 3])
    if box is None:
        return layer, 0, 0
    x0, y0, x1, y1 = box
    return layer[y0:y1, x0:x1], x0, y0


def _check_global(global_layer: np.ndarray | None, height: int, width: int) -> None:
    if global_layer is None:
        return
    if (global_layer.dtype != np.uint8 or global_layer.ndim != 3
            or global_layer.shape[:2] != (height, width) or global_layer.shape[-1] not in (3, 4)):
        raise InputError(
            f"global_layer must be uint8 [{height}, {width}, 3], got "
            f"{global_layer.dtype} {list(global_layer.shape)}"
        )


def write_psd(
    path: str | os.PathLike,
    background: np.ndarray,
    layers: Sequence[np.ndarray],
    names: Sequence[str],
    global_layer: np.ndarray | None = None,
    scene: Mapping[str, Any] | None = None,
) -> Path:
    """Write an 8-bit RGB Photoshop file: the background as the bottom layer, then the
    foregrounds in paint order, named after `names` (unicode kept, cut to 255
    characters), then `global_layer` (uint8 `[H, W, 3]`, if given) hidden on top. The
    file's flattened image (what viewers without layer support show) is the composite
    of the visible layers; `scene`, if given, goes into its XMP metadata. Returns the
    path written."""
    height, width, names = _check_inputs(background, layers, names)
    _check_global(global_layer, height, width)
    names = [name[:PSD_MAX_NAME] for name in names]
    record = None if scene is None else make_record(scene, names, layers)

    def write(target: Path) -> None:
        psd = PSDImage.new("RGB", (width, height))
        pieces = [(np.asarray(background), 0, 0)] + [_crop(layer) for layer in layers]
        for (pixels, left, top), name in zip(pieces, names):
            layer = PixelLayer.fromarray(np.ascontiguousarray(pixels), psd, top=top, left=left)
            layer.name = name
            psd.append(layer)
        if global_layer is not None:
            layer = PixelLayer.fromarray(np.ascontiguousarray(global_layer), psd)
            layer.name = GLOBAL_LAYER_NAME
            layer.visible = False
            psd.append(layer)
        if record is not None:
            psd.image_resources[Resource.XMP_METADATA] = ImageResource(
                key=Resource.XMP_METADATA, data=record_xmp(record))
        psd.save(target)

    return write_atomically(path, write)


def _stack_xml(
    width: int, height: int, entries: list[tuple[str, str, int, int, bool]]
) -> bytes:
    """OpenRaster stack.xml; `entries` are `(name, src, x, y, visible)`, top layer first."""
    image = ET.Element(
        "image", {"version": "0.0.6", "w": str(width), "h": str(height), "xres": "72", "yres": "72"}
    )
    stack = ET.SubElement(image, "stack")
    for name, src, x, y, visible in entries:
        ET.SubElement(
            stack,
            "layer",
            {
                "name": name,
                "src": src,
                "x": str(x),
                "y": str(y),
                "opacity": "1.000",
                "visibility": "visible" if visible else "hidden",
                "composite-op": "svg:src-over",
            },
        )
    return ET.tostring(image, encoding="utf-8", xml_declaration=True)


def write_ora(
    path: str | os.PathLike,
    background: np.ndarray,
    layers: Sequence[np.ndarray],
    names: Sequence[str],
    global_layer: np.ndarray | None = None,
    scene: Mapping[str, Any] | None = None,
) -> Path:
    """Write an OpenRaster file (opens in GIMP, Krita, MyPaint).

    The zip holds `mimetype` first and uncompressed, `stack.xml` listing the layers top
    first (`global_layer`, uint8 `[H, W, 3]`, if given, hidden on top), `data/*.png`,
    `mergedimage.png` (the composite of the visible layers, as OpenRaster defines it)
    and `Thumbnails/thumbnail.png` (at most 256 pixels a side), and `scene`, if given,
    as `dreamlayer/scene.json`. Returns the path written.
    """
    height, width, names = _check_inputs(background, layers, names)
    _check_global(global_layer, height, width)
    record = None if scene is None else make_record(scene, names, layers)
    merged = alpha_composite(np.asarray(background), list(layers))
    pieces = [(np.asarray(background), 0, 0)] + [_crop(layer) for layer in layers]
    srcs = [f"data/layer{index:03d}.png" for index in range(len(pieces))]
    entries = [(name, src, x, y, True) for name, src, (_, x, y) in zip(names, srcs, pieces)]
    if global_layer is not None:
        pieces.append((np.asarray(global_layer), 0, 0))
        srcs.append("data/global.png")
        entries.append((GLOBAL_LAYER_NAME, srcs[-1], 0, 0, False))
    thumbnail = Image.fromarray(merged)
    thumbnail.thumbnail((ORA_THUMBNAIL, ORA_THUMBNAIL))
    buffer = io.BytesIO()
    thumbnail.save(buffer, format="PNG")

    def write(target: Path) -> None:
        with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("mimetype", "image/openraster", compress_type=zipfile.ZIP_STORED)
            archive.writestr("stack.xml", _stack_xml(width, height, entries[::-1]))
            for src, (pixels, _, _) in zip(srcs, pieces):
                archive.writestr(src, encode_png(pixels), compress_type=zipfile.ZIP_STORED)
            archive.writestr(
                "mergedimage.png", encode_png(merged), compress_type=zipfile.ZIP_STORED
            )
            archive.writestr(
                "Thumbnails/thumbnail.png", buffer.getvalue(), compress_type=zipfile.ZIP_STORED
            )
            if record is not None:
                archive.writestr(ORA_ENTRY, record_json(record))

    return write_atomically(path, write)
