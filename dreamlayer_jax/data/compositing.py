"""Alpha compositing of layered scenes in numpy (straight alpha in, RGB out).

Layers are stored with *straight* (not premultiplied) alpha, as PNG, PSD and ORA keep
them. Painting follows list order: later layers go over earlier ones. The float
functions work in `[0, 1]`; the uint8 ones convert, composite in float and round, so a
fully opaque pixel is copied exactly and a fully transparent one leaves what is below
unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def to_float(image: np.ndarray) -> np.ndarray:
    """uint8 `[..., C]` in `[0, 255]` -> float32 in `[0, 1]` (floats pass through as float32)."""
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    return np.asarray(image, dtype=np.float32)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """float `[..., C]` in `[0, 1]` -> uint8, rounded and clipped."""
    return np.clip(np.rint(np.asarray(image, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


def premultiply(rgba: np.ndarray) -> np.ndarray:
    """Straight RGBA `[..., 4]` (uint8 or float) -> premultiplied float32 RGBA in `[0, 1]`."""
    rgba = to_float(rgba)
    return np.concatenate([rgba[..., :3] * rgba[..., 3:4], rgba[..., 3:4]], axis=-1)


def unpremultiply(rgba: np.ndarray) -> np.ndarray:
    """Premultiplied float RGBA `[..., 4]` -> straight float32 RGBA; colour 0 where alpha is 0."""
    rgba = np.asarray(rgba, dtype=np.float32)
    alpha = rgba[..., 3:4]
    safe = np.where(alpha > 0, alpha, 1.0)
    rgb = np.where(alpha > 0, rgba[..., :3] / safe, 0.0)
    return np.concatenate([np.clip(rgb, 0.0, 1.0), alpha], axis=-1)


def over(top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """Straight float RGBA `top` over straight float RGBA `bottom`, both `[..., 4]`."""
    top_p, bottom_p = premultiply(top), premultiply(bottom)
    out = top_p + bottom_p * (1.0 - top_p[..., 3:4])
    return unpremultiply(out)


def alpha_composite_float(background: np.ndarray, layers: Sequence[np.ndarray]) -> np.ndarray:
    """Paint straight-alpha float layers `[H, W, 4]` over an RGB background `[H, W, 3]`.

    Returns float32 RGB `[H, W, 3]` in `[0, 1]`.
    """
    out = to_float(background)[..., :3].copy()
    for layer in layers:
        layer = to_float(layer)
        alpha = layer[..., 3:4]
        out = layer[..., :3] * alpha + out * (1.0 - alpha)
    return out


def alpha_composite(background: np.ndarray, layers: Sequence[np.ndarray]) -> np.ndarray:
    """Paint straight-alpha layers `[H, W, 4]` over `background` `[H, W, 3]` in list order.

    uint8 background -> uint8 result (composited in float, rounded); a float background
    gives a float32 result in `[0, 1]`. Layers may be uint8 or float in either case.
    """
    result = alpha_composite_float(background, layers)
    if background.dtype == np.uint8:
        return to_uint8(result)
    return result


def alpha_bbox(alpha: np.ndarray) -> tuple[int, int, int, int] | None:
    """Pixel bounding box `(x0, y0, x1, y1)` (end exclusive) of `alpha > 0`, None if empty."""
    rows = np.flatnonzero(np.any(alpha > 0, axis=1))
    cols = np.flatnonzero(np.any(alpha > 0, axis=0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def checkerboard(h: int, w: int, cell: int = 8) -> np.ndarray:
    """The usual transparency backdrop: light and mid grey squares, uint8 `[h, w, 3]`."""
    yy, xx = np.mgrid[0:h, 0:w]
    light = ((yy // cell + xx // cell) % 2) == 0
    grey = np.where(light, 204, 153).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def preview_strip(
    background: np.ndarray,
    layers: Sequence[np.ndarray],
    composite: np.ndarray,
    gap: int = 2,
) -> np.ndarray:
    """All layers of a scene side by side, uint8 RGB `[H, (K + 2) * W + (K + 1) * gap, 3]`.

    Order: background, each foreground (over a checkerboard so transparency shows),
    then the composite; columns are separated by `gap` white pixels.
    """
    h, w = background.shape[:2]
    board = checkerboard(h, w, cell=max(2, min(h, w) // 8))
    tiles = [to_uint8(to_float(background)[..., :3])]
    tiles += [alpha_composite(board, [layer]) for layer in layers]
    tiles.append(to_uint8(to_float(composite)[..., :3]))
    spacer = np.full((h, gap, 3), 255, dtype=np.uint8)
    parts: list[np.ndarray] = []
    for index, tile in enumerate(tiles):
        if index:
            parts.append(spacer)
        parts.append(tile)
    return np.concatenate(parts, axis=1)
