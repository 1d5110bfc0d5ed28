"""Writing layered scenes as Photoshop (.psd) and OpenRaster (.ora) files.

Both writers take the same arguments: an opaque background `uint8 [H, W, 3]`, the
foregrounds `uint8 [H, W, 4]` (straight alpha) in paint order, and `names`: either one
per layer *including the background* (`names[0]` names the background, `names[k + 1]`
the foreground `layers[k]`), or one per foreground only, the background then being
named "background". Foregrounds are stored cropped to their alpha's bounding box
at the right offset, as painting programs do. Files are written atomically (to a
temporary file next to the target, then renamed).
"""

from __future__ import annotations

import io
import os
import tempfile
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from psd_tools import PSDImage
from psd_tools.api.layers import PixelLayer

from dreamlayer_jax.data.compositing import alpha_bbox, alpha_composite
from dreamlayer_jax.data.image_io import encode_png
from dreamlayer_jax.errors import InputError, OutputError

DEFAULT_BACKGROUND_NAME = "background"
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


def _write_atomically(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({exc})") from exc
    try:
        write(Path(temp))
        os.replace(temp, path)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({exc})") from exc
    finally:
        if os.path.exists(temp):
            os.remove(temp)
    return path


def write_psd(
    path: str | os.PathLike,
    background: np.ndarray,
    layers: Sequence[np.ndarray],
    names: Sequence[str],
) -> Path:
    """Write an 8-bit RGB Photoshop file: the background as the bottom layer, then the
    foregrounds in paint order, named after `names` (unicode kept, cut to 255
    characters). The file's flattened image (what viewers without layer support show)
    is the composite of those layers. Returns the path written."""
    height, width, names = _check_inputs(background, layers, names)

    def write(target: Path) -> None:
        psd = PSDImage.new("RGB", (width, height))
        pieces = [(np.asarray(background), 0, 0)] + [_crop(layer) for layer in layers]
        for (pixels, left, top), name in zip(pieces, names):
            layer = PixelLayer.fromarray(np.ascontiguousarray(pixels), psd, top=top, left=left)
            layer.name = name[:PSD_MAX_NAME]
            psd.append(layer)
        psd.save(target)

    return _write_atomically(path, write)


def _stack_xml(width: int, height: int, entries: list[tuple[str, str, int, int]]) -> bytes:
    """OpenRaster stack.xml; `entries` are `(name, src, x, y)`, top layer first."""
    image = ET.Element(
        "image", {"version": "0.0.6", "w": str(width), "h": str(height), "xres": "72", "yres": "72"}
    )
    stack = ET.SubElement(image, "stack")
    for name, src, x, y in entries:
        ET.SubElement(
            stack,
            "layer",
            {
                "name": name,
                "src": src,
                "x": str(x),
                "y": str(y),
                "opacity": "1.000",
                "visibility": "visible",
                "composite-op": "svg:src-over",
            },
        )
    return ET.tostring(image, encoding="utf-8", xml_declaration=True)


def write_ora(
    path: str | os.PathLike,
    background: np.ndarray,
    layers: Sequence[np.ndarray],
    names: Sequence[str],
    composite: np.ndarray | None = None,
) -> Path:
    """Write an OpenRaster file (opens in GIMP, Krita, MyPaint).

    The zip holds `mimetype` first and uncompressed, `stack.xml` listing the layers top
    first, `data/*.png`, `mergedimage.png` (`composite`, uint8 `[H, W, 3]`; the
    alpha-composite of the layers when None) and `Thumbnails/thumbnail.png` (at most
    256 pixels a side). Returns the path written.
    """
    height, width, names = _check_inputs(background, layers, names)
    if composite is None:
        composite = alpha_composite(np.asarray(background), list(layers))
    elif composite.dtype != np.uint8 or composite.shape != (height, width, 3):
        raise InputError(
            f"composite must be uint8 [{height}, {width}, 3], got "
            f"{composite.dtype} {list(composite.shape)}"
        )
    pieces = [(np.asarray(background), 0, 0)] + [_crop(layer) for layer in layers]
    srcs = [f"data/layer{index:03d}.png" for index in range(len(pieces))]
    entries = [(name, src, x, y) for name, src, (_, x, y) in zip(names, srcs, pieces)]
    thumbnail = Image.fromarray(composite)
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
                "mergedimage.png", encode_png(composite), compress_type=zipfile.ZIP_STORED
            )
            archive.writestr(
                "Thumbnails/thumbnail.png", buffer.getvalue(), compress_type=zipfile.ZIP_STORED
            )

    return _write_atomically(path, write)
