"""Rendering for the synthetic world: antialiased shapes with soft drop shadows,
procedural backgrounds, and the lighting conditions.

All functions are pure numpy on float32 images in `[0, 1]`, `[H, W, C]`. Shapes are
drawn from signed distance functions (negative inside, in pixels) so that their edges
get fractional alpha: `alpha = clip(0.5 - sdf, 0, 1)`.
"""

from __future__ import annotations

import math

import numpy as np

from dreamlayer_jax.data.compositing import to_float, to_uint8

# (gain, bias) per channel: lit = clip(rgb * gain + bias). "daylight" is the identity.
LIGHT_TRANSFORMS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "daylight": ((1.0, 1.0, 1.0), (0.0, 0.0, 0.0)),
    "sunset": ((1.08, 0.80, 0.56), (0.07, 0.03, 0.0)),
    "night": ((0.40, 0.47, 0.72), (0.0, 0.01, 0.05)),
}

# Shadow: offset (down-right) and soft edge width as fractions of the object's radius.
SHADOW_OFFSET = (0.18, 0.24)
SHADOW_SOFTNESS = 0.35
SHADOW_OPACITY = 0.5


def apply_light(rgb: np.ndarray, light: str) -> np.ndarray:
    """Light float RGB `[..., 3]` under `light`; daylight returns the input unchanged."""
    if light == "daylight":
        return rgb
    gain, bias = LIGHT_TRANSFORMS[light]
    return np.clip(rgb * np.asarray(gain, np.float32) + np.asarray(bias, np.float32), 0.0, 1.0)


def light_layer(layer: np.ndarray, light: str) -> np.ndarray:
    """Light a uint8 RGBA layer `[H, W, 4]`'s colour (alpha untouched); daylight: identity."""
    if light == "daylight":
        return layer
    rgb = to_uint8(apply_light(to_float(layer[..., :3]), light))
    return np.concatenate([rgb, layer[..., 3:]], axis=-1)


def pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates `(x, y)`, each float32 `[size, size]`, in pixels."""
    coords = np.arange(size, dtype=np.float32) + 0.5
    y, x = np.meshgrid(coords, coords, indexing="ij")
    return x, y


# ----------------------------------------------------------------------------- shapes


def _regular_polygon(n: int, radius: float = 1.0, start: float = -90.0) -> np.ndarray:
    angles = np.deg2rad(start + 360.0 * np.arange(n) / n)
    return np.stack([np.cos(angles), np.sin(angles)], axis=-1) * radius


def _star(points: int = 5, outer: float = 1.0, inner: float = 0.45) -> np.ndarray:
    angles = np.deg2rad(-90.0 + 180.0 * np.arange(2 * points) / points)
    radii = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    return np.stack([np.cos(angles) * radii, np.sin(angles) * radii], axis=-1)


# Polygon outlines in units of the object's radius (all fit in the unit circle).
POLYGONS: dict[str, np.ndarray] = {
    "triangle": _regular_polygon(3),
    "star": _star(),
    "diamond": np.array([[0.0, -1.0], [0.66, 0.0], [0.0, 1.0], [-0.66, 0.0]]),
    "hexagon": _regular_polygon(6, start=0.0),
}


def _polygon_sdf(u: np.ndarray, v: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Signed distance from points `(u, v)` `[H, W]` to a simple polygon `[E, 2]`."""
    a = vertices.astype(np.float32)
    b = np.roll(a, -1, axis=0)
    edge = b - a  # [E, 2]
    wu, wv = u[..., None] - a[:, 0], v[..., None] - a[:, 1]  # [H, W, E]
    t = np.clip((wu * edge[:, 0] + wv * edge[:, 1]) / (edge**2).sum(-1), 0.0, 1.0)
    dist = np.sqrt((wu - t * edge[:, 0]) ** 2 + (wv - t * edge[:, 1]) ** 2).min(axis=-1)
    straddles = (a[:, 1] > v[..., None]) != (b[:, 1] > v[..., None])
    dy = np.where(edge[:, 1] == 0, 1.0, edge[:, 1])
    x_cross = a[:, 0] + (v[..., None] - a[:, 1]) * edge[:, 0] / dy
    inside = (np.sum(straddles & (u[..., None] < x_cross), axis=-1) % 2) == 1
    return np.where(inside, -dist, dist)


def _box_sdf(u: np.ndarray, v: np.ndarray, half_u: float, half_v: float) -> np.ndarray:
    qu, qv = np.abs(u) - half_u, np.abs(v) - half_v
    outside = np.sqrt(np.maximum(qu, 0.0) ** 2 + np.maximum(qv, 0.0) ** 2)
    return outside + np.minimum(np.maximum(qu, qv), 0.0)


def shape_sdf(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance to `shape` in shape units (the shape fits in the unit circle)."""
    if shape == "circle":
        return np.sqrt(u**2 + v**2) - 0.95
    if shape == "ring":
        return np.abs(np.sqrt(u**2 + v**2) - 0.72) - 0.24
    if shape == "square":
        return _box_sdf(u, v, 0.7, 0.7)
    if shape == "cross":
        return np.minimum(_box_sdf(u, v, 0.95, 0.3), _box_sdf(u, v, 0.3, 0.95))
    return _polygon_sdf(u, v, POLYGONS[shape])


def shadow_extent(radius: float) -> tuple[float, float]:
    """How far right / down (pixels) from the centre an object's shadow can reach."""
    soft = max(1.5, SHADOW_SOFTNESS * radius)
    return (
        radius + SHADOW_OFFSET[0] * radius + soft / 2,
        radius + SHADOW_OFFSET[1] * radius + soft / 2,
    )


def render_object(
    size: int,
    shape: str,
    colour: np.ndarray,
    centre: tuple[float, float],
    radius: float,
    angle: float,
    shadow: bool = True,
) -> np.ndarray:
    """One foreground: an antialiased shape, lit from above, with a soft drop shadow.

    `centre` and `radius` are in pixels, `angle` in radians, `colour` float RGB `[3]`.
    Returns uint8 straight-alpha RGBA `[size, size, 4]`; colour is 0 where alpha is 0.
    """
    x, y = pixel_grid(size)
    cx, cy = centre
    cos, sin = math.cos(angle), math.sin(angle)

    def sdf_pixels(ox: float, oy: float) -> np.ndarray:
        dx, dy = (x - cx - ox) / radius, (y - cy - oy) / radius
        return shape_sdf(shape, cos * dx + sin * dy, -sin * dx + cos * dy) * radius

    body = np.clip(0.5 - sdf_pixels(0.0, 0.0), 0.0, 1.0)
    shade = 1.08 - 0.16 * np.clip((y - (cy - radius)) / (2 * radius), 0.0, 1.0)
    rgb = np.clip(colour[None, None, :] * shade[..., None], 0.0, 1.0)
    alpha = body
    if shadow:
        soft = max(1.5, SHADOW_SOFTNESS * radius)
        ramp = np.clip(
            0.5 - sdf_pixels(SHADOW_OFFSET[0] * radius, SHADOW_OFFSET[1] * radius) / soft,
            0.0,
            1.0,
        )
        cast = SHADOW_OPACITY * ramp * ramp * (3.0 - 2.0 * ramp)  # smoothstep
        # The body over its (black) shadow, in straight alpha: colour = rgb * body / alpha.
        alpha = body + cast * (1.0 - body)
        rgb = rgb * np.divide(body, alpha, out=np.zeros_like(alpha), where=alpha > 0)[..., None]
    layer = to_uint8(np.concatenate([rgb, alpha[..., None]], axis=-1))
    layer[layer[..., 3] == 0] = 0
    return layer


# ------------------------------------------------------------------------ backgrounds


def second_shade(colour: np.ndarray) -> np.ndarray:
    """The paler (or, for a pale colour, darker) partner of `colour` for patterns."""
    if float(colour.mean()) > 0.75:
        return colour * 0.72
    return colour + (1.0 - colour) * 0.45


def _mix(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    return a[None, None, :] * (1.0 - t[..., None]) + b[None, None, :] * t[..., None]


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Bilinear value noise `[size, size]` in `[0, 1]` over a `cells x cells` grid."""
    grid = rng.uniform(size=(cells + 1, cells + 1)).astype(np.float32)
    pos = (np.arange(size, dtype=np.float32) + 0.5) / size * cells
    i0 = np.minimum(pos.astype(np.int64), cells - 1)
    f = pos - i0
    rows = grid[i0] * (1 - f)[:, None] + grid[i0 + 1] * f[:, None]  # [size, cells + 1]
    return rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]


def render_background(
    rng: np.random.Generator, size: int, kind: str, colour: np.ndarray
) -> np.ndarray:
    """An unlit background of `kind` in `colour`: float32 RGB `[size, size, 3]`."""
    x, y = pixel_grid(size)
    other = second_shade(colour)
    if kind == "gradient":
        theta = rng.uniform(0.0, 2.0 * math.pi)
        proj = (x - size / 2) * math.cos(theta) + (y - size / 2) * math.sin(theta)
        t = np.clip(proj / (size * 0.75) + 0.5, 0.0, 1.0)
        image = _mix(other, colour * 0.8, t)
    elif kind == "floor":
        horizon = rng.uniform(0.35, 0.55) * size
        wall = _mix(colour + (1.0 - colour) * 0.55, colour + (1.0 - colour) * 0.35, y / size)
        depth = np.clip((y - horizon) / (size - horizon), 0.0, 1.0)
        spread = (x - size / 2) / np.maximum(y - horizon, 0.5) * 1.5 + rng.uniform()
        # Plank seams converging to the horizon, faded out where they get denser than pixels.
        seams = (np.abs(spread - np.round(spread)) < 0.06) * np.clip(3.0 * depth, 0.0, 1.0)
        floor = colour[None, None, :] * ((0.7 + 0.3 * depth) * (1.0 - 0.2 * seams))[..., None]
        image = np.where((y < horizon)[..., None], wall, floor)
    elif kind == "stripes":
        theta = math.radians(float(rng.choice([0.0, 45.0, 90.0, 135.0])))
        period = rng.uniform(0.12, 0.25) * size
        s = (x * math.cos(theta) + y * math.sin(theta)) / period + rng.uniform()
        edge = (np.abs(s - np.floor(s) - 0.5) - 0.25) * period  # pixels from a stripe edge
        image = _mix(colour, other, np.clip(edge + 0.5, 0.0, 1.0))
    elif kind == "checks":
        cell = rng.uniform(0.1, 0.2) * size
        ox, oy = rng.uniform(0.0, cell, size=2)
        parity = ((np.floor((x + ox) / cell) + np.floor((y + oy) / cell)) % 2).astype(np.float32)
        image = _mix(colour, other, parity)
    elif kind == "noise":
        t = 0.65 * _smooth_noise(rng, size, int(rng.integers(3, 7)))
        t += 0.35 * _smooth_noise(rng, size, int(rng.integers(10, 16)))
        image = colour[None, None, :] * (0.6 + 0.6 * t)[..., None]
    else:
        raise ValueError(f"unknown background kind {kind!r}")
    return np.clip(image, 0.0, 1.0).astype(np.float32)
