"""Picture matte: a decomposed foreground's alpha cut again from the picture itself.

Decomposition regenerates each foreground with the model, so a layer's alpha has the
model's idea of the object's outline, which may be a blob where the picture shows a
cross. Once the background is recovered, the picture says where it is covered: a pixel
whose colour differs from the background's belongs to a foreground. `picture_matte`
keeps the model's layers as the prior of *where* each object is and *which* layer owns a
pixel, and takes the outline and the colours from the picture:

- `d = picture - background` per pixel (RGB in [0, 1]);
- each layer, front to back, may only take pixels within `reach` pixels of its own
  body (alpha > `threshold`) and not already opaque in a layer in front of it;
- its alpha there is `d`'s share of the layer's contrast `c` along `c`,
  `clip(d . c / |c|^2, 0, 1)`, so a neighbour of another colour is not taken; `c` is
  the per-channel median of `d` over the body's pixels that stand out from the
  background (`|d|` >= `MIN_CONTRAST`) and that no layer in front covers. A layer with
  no such pixel (or whose median does not stand out) keeps the model's alpha;
- its colour solves `picture = alpha * colour + (1 - alpha) * background`.

Pure numpy on decoded pictures; `pipeline.decompose.decompose(matte=True)` applies it
and encodes the matted layers back into the result's latents.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dreamlayer_jax.data.compositing import to_uint8

MIN_CONTRAST = 0.05  # below this a layer's body is indistinguishable from the background


def dilate(mask: np.ndarray, reach: int) -> np.ndarray:
    """`bool[H, W]` grown by `reach` pixels (a square neighbourhood)."""
    if reach <= 0:
        return mask.copy()
    h, w = mask.shape
    padded = np.pad(mask, reach)
    out = np.zeros_like(mask)
    for dy in range(2 * reach + 1):
        for dx in range(2 * reach + 1):
            out |= padded[dy:dy + h, dx:dx + w]
    return out


def picture_matte(picture: np.ndarray, background: np.ndarray, layers: Sequence[np.ndarray],
                  *, reach: int = 2, threshold: float = 0.5) -> list[np.ndarray]:
    """Re-cut `layers` (`uint8[H, W, 4]`, straight alpha, paint order) from `picture`
    (`uint8[H, W, 3]`) over its recovered `background` (`uint8[H, W, 3]`); see the module
    docstring. A layer with no body keeps its pixels. Returns new `uint8[H, W, 4]` arrays."""
    bg = background.astype(np.float64) / 255.0
    d = picture.astype(np.float64) / 255.0 - bg  # [H, W, 3]
    taken = np.zeros(d.shape[:2], bool)  # opaque in a layer in front
    out: list[np.ndarray] = [None] * len(layers)  # type: ignore[list-item]
    for index in reversed(range(len(layers))):
        layer = layers[index]
        body = layer[..., 3] / 255.0 > threshold
        standing = body & ~taken & (np.linalg.norm(d, axis=-1) >= MIN_CONTRAST)
        contrast = np.median(d[standing], axis=0) if standing.any() else np.zeros(3)
        if np.linalg.norm(contrast) < MIN_CONTRAST:  # nothing of its own stands out
            out[index] = layer.copy()
            taken |= body
            continue
        region = dilate(body, reach) & ~taken
        share = d @ contrast / float(contrast @ contrast)
        alpha = np.where(region, np.clip(share, 0.0, 1.0), 0.0)
        safe = np.maximum(alpha, 1e-6)[..., None]
        colour = np.clip(bg + d / safe, 0.0, 1.0)
        colour = np.where(alpha[..., None] > 0, colour, layer[..., :3] / 255.0)
        out[index] = to_uint8(np.concatenate([colour, alpha[..., None]], axis=-1))
        taken |= alpha > threshold
    return out
