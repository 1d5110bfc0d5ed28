"""Decoding images of any PNG flavour to uint8 RGB / RGBA arrays, and writing PNGs.

Scene files come from many tools: 16-bit, palette, grayscale, grayscale+alpha and RGB
PNGs all occur. Everything is converted to 8-bit straight-alpha RGBA first; an RGB
result is that RGBA flattened over white (the way a viewer shows it).
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from dreamlayer_jax.errors import DataError

_WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
# What Pillow raises on damaged files (truncated data, bad chunks, bad zlib streams).
_DECODE_ERRORS = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    struct.error,
    zlib.error,
    Image.DecompressionBombError,
)


def pil_to_rgba(image: Image.Image) -> np.ndarray:
    """Any PIL image -> uint8 straight-alpha RGBA `[H, W, 4]`.

    16-bit and 32-bit grayscale modes are scaled to 8 bits (`round(v / 257)`); palette
    images keep their transparency.
    """
    if image.mode in _WIDE_MODES:
        wide = np.asarray(image, dtype=np.float64)
        if image.mode == "F" and wide.size and wide.max() <= 1.0:
            wide = wide * 65535.0
        grey = np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8)
        image = Image.fromarray(grey)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("PA")
    rgba = np.asarray(image.convert("RGBA"), dtype=np.uint8)
    return np.ascontiguousarray(rgba)


def flatten_over_white(rgba: np.ndarray) -> np.ndarray:
    """uint8 RGBA `[H, W, 4]` -> uint8 RGB `[H, W, 3]`, composited over white."""
    if np.all(rgba[..., 3] == 255):
        return np.ascontiguousarray(rgba[..., :3])
    alpha = rgba[..., 3:4].astype(np.float32) / 255.0
    rgb = rgba[..., :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def decode_image(data: bytes | Path, name: str, channels: int) -> np.ndarray:
    """Decode an image file (path or bytes) to uint8 `[H, W, channels]` (3 or 4).

    Raises DataError naming `name` when the file is missing or not a readable image.
    """
    try:
        source = io.BytesIO(data) if isinstance(data, bytes) else data
        with Image.open(source) as image:
            image.load()
            rgba = pil_to_rgba(image)
    except FileNotFoundError as exc:
        raise DataError(f"{name}: file not found") from exc
    except _DECODE_ERRORS as exc:
        raise DataError(f"{name}: not a readable image ({exc})") from exc
    return rgba if channels == 4 else flatten_over_white(rgba)


def encode_png(image: np.ndarray, compress_level: int = 4) -> bytes:
    """uint8 `[H, W, 3]` or `[H, W, 4]` -> PNG bytes (RGB or RGBA, lossless)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(
        buffer, format="PNG", compress_level=compress_level
    )
    return buffer.getvalue()
