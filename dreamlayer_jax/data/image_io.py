"""Decoding images of any PNG flavour to uint8 RGB / RGBA arrays, and writing PNGs.

Scene files come from many tools: 16-bit, palette, grayscale, grayscale+alpha and RGB
PNGs all occur. Everything is converted to 8-bit straight-alpha RGBA first; an RGB
result is that RGBA flattened over white (the way a viewer shows it). With
`to_srgb=True` an embedded ICC profile other than sRGB (an iCCP chunk, as Krita writes
into OpenRaster layers) is applied, so the colours come out in sRGB.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms

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


def icc_to_srgb(rgba: np.ndarray, icc: bytes | None) -> np.ndarray:
    """uint8 RGBA whose colours are in the ICC profile `icc` (RGB or gray) -> sRGB.

    Returned unchanged when there is no profile, it is sRGB already, or it cannot be
    used (an unreadable profile, another colour space)."""
    if not icc:
        return rgba
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if ImageCms.getProfileDescription(profile).strip().startswith("sRGB"):
            return rgba
        space = profile.profile.xcolor_space.strip()
        if space == "RGB":
            source = Image.fromarray(np.ascontiguousarray(rgba[..., :3]))
        elif space == "GRAY":
            source = Image.fromarray(np.ascontiguousarray(rgba[..., 0]))
        else:
            return rgba
        converted = ImageCms.profileToProfile(
            source, profile, ImageCms.createProfile("sRGB"), outputMode="RGB",
            renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC)
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return rgba
    out = np.concatenate([np.asarray(converted, np.uint8), rgba[..., 3:]], axis=-1)
    out[out[..., 3] == 0] = 0
    return out


def decode_image(
    data: bytes | Path, name: str, channels: int, to_srgb: bool = False
) -> np.ndarray:
    """Decode an image file (path or bytes) to uint8 `[H, W, channels]` (3 or 4), its
    ICC profile applied when `to_srgb`.

    Raises DataError naming `name` when the file is missing or not a readable image.
    """
    try:
        source = io.BytesIO(data) if isinstance(data, bytes) else data
        with Image.open(source) as image:
            image.load()
            rgba = pil_to_rgba(image)
            if to_srgb:
                rgba = icc_to_srgb(rgba, image.info.get("icc_profile"))
    except FileNotFoundError as exc:
        raise DataError(f"{name}: file not found") from exc
    except Image.UnidentifiedImageError as exc:  # its text names a BytesIO object
        raise DataError(f"{name}: not a readable image (unknown image format)") from exc
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
