"""Where a global layer disagrees with the composite of its layers: lighting, outlines,
bodies or background, smooth or per-pixel.

`coherence_psnr` (`eval/measures.py`) is one number. `coherence_parts` splits the
squared difference `d = global - composite` (`[H, W, 3]`, floats in [0, 1]) of one
scene:

- **lighting**: the part a per-channel gain and bias (the synthetic world's lights are
  exactly that, `data/synthetic_render.py`) fitted from the composite to the global
  layer removes; the rest is the residual `r`;
- **regions** of the residual, from the layers' coverage `c = 1 - prod(1 - alpha)`:
  `outline` (within one pixel of where `c` crosses 0.5, or `0.05 < c < 0.5`), `body`
  (`c >= 0.5`, not outline) and `background` (the rest). For each, its share of the
  squared residual and the PSNR the scene would have, lighting fitted, if that
  region's residual were 0 too;
- **smooth** vs per-pixel: the share of the residual's energy left after a 3x3 box
  blur (`smooth`); what the blur removes is per-pixel disagreement.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dreamlayer_jax.data.compositing import alpha_composite_float, to_float
from dreamlayer_jax.eval.measures import psnr_of_mse
from dreamlayer_jax.pipeline.matte import dilate

REGIONS = ("outline", "body", "background")


def _box_blur(image: np.ndarray) -> np.ndarray:
    """3x3 mean of `[H, W, C]`, edges replicated."""
    padded = np.pad(image, ((1, 1), (1, 1), (0, 0)), mode="edge")
    h, w = image.shape[:2]
    return sum(padded[i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9.0


def fit_lighting(composite: np.ndarray, global_rgb: np.ndarray) -> np.ndarray:
    """The composite `[H, W, 3]` under the per-channel gain and bias that brings it
    closest (least squares) to `global_rgb`; a flat channel gets its mean offset only."""
    lit = np.empty_like(composite)
    for ch in range(composite.shape[-1]):
        x, y = composite[..., ch].ravel(), global_rgb[..., ch].ravel()
        var = float(np.var(x))
        gain = float(np.mean((x - x.mean()) * (y - y.mean())) / var) if var > 1e-12 else 1.0
        lit[..., ch] = (gain * composite[..., ch] + (y.mean() - gain * x.mean()))
    return lit


def region_masks(layers: Sequence[np.ndarray], height: int, width: int
                 ) -> dict[str, np.ndarray]:
    """Boolean `[H, W]` masks of `REGIONS` from the foregrounds' alpha (any may be empty)."""
    uncovered = np.ones((height, width))
    for layer in layers:
        uncovered *= 1.0 - to_float(layer)[..., 3]
    cover = 1.0 - uncovered
    inside = cover >= 0.5
    crossing = dilate(inside, 1) & dilate(~inside, 1)  # both sides within a pixel
    outline = crossing | ((cover > 0.05) & ~inside)
    body = inside & ~outline
    return {"outline": outline, "body": body, "background": ~(outline | body)}


def coherence_parts(global_rgb: np.ndarray, background: np.ndarray,
                    layers: Sequence[np.ndarray]) -> dict[str, float]:
    """One scene's coherence, split (module docstring). Inputs as `coherence_psnr`'s:
    global `[H, W, 3]`, background `[H, W, 3]`, foregrounds `[H, W, 4]` (uint8 or float).

    Keys: `psnr`, `lit_psnr` (after the lighting fit), `lighting_share`; per region R:
    `R_pixels` (its share of the pixels), `R_share` (of the squared residual),
    `psnr_without_R`; `smooth_share`.
    """
    target = to_float(np.asarray(global_rgb))[..., :3].astype(np.float64)
    composite = alpha_composite_float(background, layers).astype(np.float64)
    total = float(np.mean((target - composite) ** 2))
    residual = target - fit_lighting(composite, target)
    energy = (residual ** 2).sum(axis=-1)  # [H, W]
    left = float(energy.sum())
    parts = {"psnr": psnr_of_mse(total), "lit_psnr": psnr_of_mse(float(energy.mean()) / 3),
             "lighting_share": 1.0 - left / (3 * energy.size * total) if total > 0 else 0.0}
    for name, mask in region_masks(layers, *energy.shape).items():
        inside = float(energy[mask].sum())
        parts[f"{name}_pixels"] = float(mask.mean())
        parts[f"{name}_share"] = inside / left if left > 0 else 0.0
        parts[f"psnr_without_{name}"] = psnr_of_mse((left - inside) / (3 * energy.size))
    smooth = _box_blur(residual)
    parts["smooth_share"] = float((smooth ** 2).sum()) / left if left > 0 else 0.0
    return parts
