"""Edit operations on a saved layered scene, and the latent transforms behind them.

Layer indices are 1-based and always refer to the foregrounds' numbering in the *saved*
scene (`layer_01.png` is 1), whatever other operations come first; so `--delete 1
--move 2:...` moves the saved layer 2 even though it becomes layer 1 of the result.

The geometric operations (move, scale, flip) are planned once (`plan_move`, `plan_scale`,
`plan_flip`) into a `Transform` that any stack of latents `[..., h, w, c]` can go
through: the layer's clean latent, and in the paper variant also its kept trajectory
and its alpha (eq. 13). A layer without a box (paper variant) moves on the canvas and
scales / flips about its opaque area's centre (`centre`); it keeps no box.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from dreamlayer_jax.errors import InputError
from dreamlayer_jax.pipeline.scene import Box


@dataclass(frozen=True)
class Move:
    """Shift foreground `index` by `(dx, dy)` canvas fractions (whole latent pixels)."""

    index: int
    dx: float
    dy: float


@dataclass(frozen=True)
class ScaleOp:
    """Scale foreground `index` by `factor` about its box centre."""

    index: int
    factor: float


@dataclass(frozen=True)
class Flip:
    """Mirror foreground `index` left to right about its box's vertical centre line."""

    index: int


@dataclass(frozen=True)
class Delete:
    """Drop foreground `index`."""

    index: int


@dataclass(frozen=True)
class Reprompt:
    """Regenerate foreground `index` from a new prompt (the other layers kept)."""

    index: int
    prompt: str


@dataclass(frozen=True)
class Reorder:
    """The new paint order (bottom first), as saved indices of the remaining foregrounds."""

    order: tuple[int, ...]


EditOp = Move | ScaleOp | Flip | Delete | Reprompt | Reorder

Transform = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""`transform(z [..., h, w, c], fill) -> [..., h, w, c]`, a layer's geometric edit; `fill`
(broadcast to `z`) is what an emptied pixel becomes: the transparent latent for a clean
latent, that latent at the same noise level for a kept trajectory latent, 0 for an
alpha."""


def _index(text: str, what: str) -> int:
    try:
        index = int(text.strip())
    except ValueError as exc:
        raise InputError(f"{what}: the layer index must be an integer, got {text!r}") from exc
    if index < 1:
        raise InputError(f"{what}: layer indices start at 1, got {index}")
    return index


def _split(arg: str, what: str) -> tuple[int, str]:
    if ":" not in arg:
        raise InputError(f"{what}: expected 'INDEX:VALUE', got {arg!r}")
    head, tail = arg.split(":", 1)
    return _index(head, what), tail


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise InputError(f"{what}: {text!r} is not a number") from exc
    if not math.isfinite(value):
        raise InputError(f"{what}: {text!r} is not finite")
    return value


def parse_edit_ops(move: Sequence[str] = (), scale: Sequence[str] = (),
                   delete: Sequence[str | int] = (), reprompt: Sequence[str] = (),
                   order: str | Sequence[int] | None = None,
                   flip: Sequence[str | int] = ()) -> list[EditOp]:
    """The CLI's strings as operations: move "1:+0.1,-0.05", scale "2:1.2", flip "2",
    delete "3", reprompt "1:a green star", order "2,1,3" (or a list of ints)."""
    ops: list[EditOp] = []
    for arg in reprompt:
        index, text = _split(arg, f"--reprompt {arg!r}")
        if not text.strip():
            raise InputError(f"--reprompt {arg!r}: the new prompt is empty")
        ops.append(Reprompt(index, text.strip()))
    for arg in move:
        index, text = _split(arg, f"--move {arg!r}")
        parts = text.split(",")
        if len(parts) != 2:
            raise InputError(f"--move {arg!r}: expected 'INDEX:DX,DY'")
        ops.append(Move(index, *(_number(p, f"--move {arg!r}") for p in parts)))
    for arg in scale:
        index, text = _split(arg, f"--scale {arg!r}")
        ops.append(ScaleOp(index, _number(text, f"--scale {arg!r}")))
    for arg in flip:
        ops.append(Flip(_index(str(arg), f"--flip {arg!r}")))
    for arg in delete:
        ops.append(Delete(_index(str(arg), f"--delete {arg!r}")))
    if order is not None:
        items = order.split(",") if isinstance(order, str) else [str(o) for o in order]
        ops.append(Reorder(tuple(_index(o, f"--order {order!r}") for o in items)))
    return ops


def _checked_box(box: Sequence[float], what: str) -> Box:
    eps = 1e-6
    if min(box) < -eps or max(box) > 1.0 + eps:
        raise InputError(f"{what}: the layer's box {tuple(round(v, 4) for v in box)} would "
                         "leave the canvas [0, 1]")
    x0, y0, x1, y1 = (float(np.clip(v, 0.0, 1.0)) for v in box)
    return (x0, y0, x1, y1)


def shift_latent(z: np.ndarray, transparent: np.ndarray, sx: int, sy: int) -> np.ndarray:
    """`z[..., h, w, c]` moved by `(sx, sy)` latent pixels; the vacated area is
    `transparent` (broadcast to `z`)."""
    h, w = z.shape[-3:-1]
    out = np.array(np.broadcast_to(transparent, z.shape), dtype=z.dtype)
    if abs(sx) >= w or abs(sy) >= h:
        return out
    dst_y, src_y = slice(max(sy, 0), h + min(sy, 0)), slice(max(-sy, 0), h - max(sy, 0))
    dst_x, src_x = slice(max(sx, 0), w + min(sx, 0)), slice(max(-sx, 0), w - max(sx, 0))
    out[..., dst_y, dst_x, :] = z[..., src_y, src_x, :]
    return out


def scale_about(z: np.ndarray, fill: np.ndarray, factor: float, cy: float, cx: float
                ) -> np.ndarray:
    """`z[..., h, w, c]` resampled, scaled by `factor` about `(cy, cx)` (latent pixels;
    bilinear, antialiased when shrinking); outside the source it is `fill`."""
    offset = jnp.asarray(z - fill)
    nd = offset.ndim
    scaled = jax.image.scale_and_translate(
        offset, offset.shape, (nd - 3, nd - 2), jnp.array([factor, factor], jnp.float32),
        jnp.array([cy * (1 - factor), cx * (1 - factor)], jnp.float32), "linear")
    return np.asarray(scaled, np.float32) + fill


def mirror(z: np.ndarray, fill: np.ndarray, sx: int) -> np.ndarray:
    """`z[..., h, w, c]` mirrored left to right, then moved by `sx` pixels (vacated:
    `fill`)."""
    return shift_latent(z[..., :, ::-1, :], fill, sx, 0)


def plan_move(box: Box | None, dx: float, dy: float, h: int, w: int, what: str
              ) -> tuple[Transform, Box | None]:
    """Shift by `round(dx * w), round(dy * h)` latent pixels; the box moves by exactly
    that (quantized) amount. Raises InputError if the box would leave the canvas."""
    sx, sy = round(dx * w), round(dy * h)
    moved = None
    if box is not None:
        moved = _checked_box((box[0] + sx / w, box[1] + sy / h, box[2] + sx / w,
                              box[3] + sy / h), what)
    return partial(_shift, sx=sx, sy=sy), moved


def _shift(z: np.ndarray, fill: np.ndarray, sx: int, sy: int) -> np.ndarray:
    return shift_latent(z, fill, sx, sy)


def plan_scale(box: Box | None, factor: float, h: int, w: int, what: str,
               centre: tuple[float, float] | None = None) -> tuple[Transform, Box | None]:
    """Scale by `factor` about the box centre (no box: about `centre`, `(cy, cx)` as
    canvas fractions, default the canvas centre)."""
    if not (math.isfinite(factor) and factor > 0):
        raise InputError(f"{what}: the scale factor must be a positive number, got {factor}")
    new_box = None
    if box is not None:
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        half_w, half_h = (box[2] - box[0]) / 2 * factor, (box[3] - box[1]) / 2 * factor
        new_box = _checked_box((cx - half_w, cy - half_h, cx + half_w, cy + half_h), what)
    else:
        cy, cx = centre if centre is not None else (0.5, 0.5)
    return partial(scale_about, factor=factor, cy=cy * h, cx=cx * w), new_box


def plan_flip(box: Box | None, h: int, w: int, what: str, centre: tuple[float, float] | None
              = None) -> tuple[Transform, Box | None]:
    """Mirror about the box's vertical centre line (no box: about `centre`'s, `(cy, cx)`
    canvas fractions, default the canvas'), rounded to whole latent pixels."""
    del h
    cx = (box[0] + box[2]) / 2 if box is not None else (centre or (0.5, 0.5))[1]
    sx = round((2 * cx - 1) * w)
    new_box = None
    if box is not None:
        new_box = _checked_box((1 - box[2] + sx / w, box[1], 1 - box[0] + sx / w, box[3]),
                               what)
    return partial(mirror, sx=sx), new_box


def move_layer(z: np.ndarray, box: Box, dx: float, dy: float, transparent: np.ndarray,
               what: str) -> tuple[np.ndarray, Box]:
    """`plan_move` applied to `z[h, w, c]`: the moved latent and box."""
    transform, moved = plan_move(box, dx, dy, *z.shape[:2], what)
    return transform(z, transparent), moved


def scale_layer(z: np.ndarray, box: Box, factor: float, transparent: np.ndarray,
                what: str) -> tuple[np.ndarray, Box]:
    """`plan_scale` applied to `z[h, w, c]` (outside the source: `transparent`)."""
    transform, scaled = plan_scale(box, factor, *z.shape[:2], what)
    return transform(z, transparent), scaled
