"""Quality measures against the synthetic world's exact ground truth (DESIGN.md section 7).

Pure, vectorised numpy. Images are `[H, W, C]`, uint8 in `[0, 255]` or float in `[0, 1]`
(uint8 is converted); boxes are `(x0, y0, x1, y1)` fractions of the image side.

- `layout_alignment`: the share of a foreground's alpha mass inside its box.
- `box_iou`: IoU of the visible part's bounding box (alpha > 0.05) with the asked box.
- `coherence_psnr`: PSNR of the global layer against the alpha-composite of the
  generated background and foregrounds (inter-layer coherence).
- `psnr`, `alpha_iou`: decomposition against ground truth (background, alpha masks).
- `mean_ci95`: a mean and its 95% confidence half-width (Student's t).

PSNR convention: images in `[0, 1]` (peak 1), and identical images give `PSNR_CAP`
(100 dB) rather than infinity, so that means and confidence intervals stay finite; any
PSNR above the cap is reported as the cap.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats

from dreamlayer_jax.data.compositing import alpha_composite_float, to_float

Box = tuple[float, float, float, float]

PSNR_CAP = 100.0
"""The PSNR of identical images, in dB (a mean squared error below 1e-10)."""

ALPHA_THRESHOLD = 0.5  # alpha IoU: opaque vs transparent
BOX_ALPHA_THRESHOLD = 0.05  # box IoU: visible, faint shadow edges included, noise not


def _alpha(alpha: np.ndarray) -> np.ndarray:
    """An alpha mask `[H, W]` (or the alpha channel of `[H, W, 4]`) as float in `[0, 1]`."""
    alpha = to_float(np.asarray(alpha))
    if alpha.ndim == 3:
        alpha = alpha[..., 3]
    if alpha.ndim != 2:
        raise ValueError(f"expected an alpha mask [H, W] or RGBA [H, W, 4], got {alpha.shape}")
    return alpha


def box_coverage(box: Box, height: int, width: int) -> np.ndarray:
    """The fraction of each pixel's area inside `box`: float32 `[height, width]` in [0, 1].

    Pixel `(i, j)` covers `[j, j + 1] x [i, i + 1]` in pixel units, so a box edge through the
    middle of a pixel counts half of it.
    """
    x0, y0, x1, y1 = (float(v) for v in box)

    def overlap(lo: float, hi: float, n: int) -> np.ndarray:
        edges = np.arange(n, dtype=np.float64)
        return np.clip(np.minimum(edges + 1.0, hi * n) - np.maximum(edges, lo * n), 0.0, 1.0)

    return np.outer(overlap(y0, y1, height), overlap(x0, x1, width)).astype(np.float32)


def layout_alignment(alpha: np.ndarray, box: Box) -> float:
    """Share of the alpha mass inside `box`, in [0, 1]; an empty layer (no alpha) gives 0:
    a missing object is not aligned."""
    alpha = _alpha(alpha)
    total = float(alpha.sum(dtype=np.float64))
    if total <= 0.0:
        return 0.0
    inside = float((alpha * box_coverage(box, *alpha.shape)).sum(dtype=np.float64))
    return min(1.0, inside / total)


def _mask_box(mask: np.ndarray) -> Box | None:
    """The bounding box of a boolean mask `[H, W]` as fractions, None if empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    h, w = mask.shape
    return (cols[0] / w, rows[0] / h, (cols[-1] + 1) / w, (rows[-1] + 1) / h)


def box_iou(alpha: np.ndarray, box: Box, threshold: float = BOX_ALPHA_THRESHOLD) -> float:
    """IoU of the bounding box of `alpha > threshold` with the asked `box` (0 if empty).

    1 means the object fills its box exactly; the synthetic boxes are the ground-truth
    objects' extents (shadow included, down to alpha 1/255), so this also checks the
    object's size. Ground truth itself scores about 0.95 at 32 px (0.80 at 8 px): the
    faintest shadow edge lies below the threshold.
    """
    found = _mask_box(_alpha(alpha) > threshold)
    if found is None:
        return 0.0
    a, b = np.asarray(found, np.float64), np.asarray(box, np.float64)
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def psnr(image: np.ndarray, reference: np.ndarray) -> float:
    """PSNR in dB of `image` against `reference` (same shape), peak 1; capped at `PSNR_CAP`."""
    a, b = to_float(np.asarray(image)), to_float(np.asarray(reference))
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    if mse <= 10.0 ** (-PSNR_CAP / 10.0):
        return PSNR_CAP
    return min(PSNR_CAP, float(-10.0 * np.log10(mse)))


def coherence_psnr(
    global_rgb: np.ndarray, background: np.ndarray, layers: Sequence[np.ndarray]
) -> float:
    """Inter-layer coherence: PSNR of the global layer `[H, W, 3]` against the
    alpha-composite of the generated background `[H, W, 3]` and foregrounds `[H, W, 4]`."""
    flat = alpha_composite_float(background, layers)
    return psnr(to_float(np.asarray(global_rgb))[..., :3], flat)


def alpha_iou(alpha: np.ndarray, reference: np.ndarray, threshold: float = ALPHA_THRESHOLD
              ) -> float:
    """IoU of `alpha > threshold` against `reference > threshold` (masks `[H, W]` or RGBA);
    two empty masks agree perfectly (1.0)."""
    a, b = _alpha(alpha) > threshold, _alpha(reference) > threshold
    union = int(np.count_nonzero(a | b))
    if union == 0:
        return 1.0
    return float(np.count_nonzero(a & b) / union)


def mean_ci95(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """`(mean, half_width)` of a 95% confidence interval for the mean of `values`.

    Uses Student's t with `n - 1` degrees of freedom and the sample standard deviation:
    `half = t_{0.975, n-1} * s / sqrt(n)`. Non-finite values are an error; one value gives
    a half-width of NaN (no spread can be estimated), none gives `(nan, nan)`.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    if not np.isfinite(x).all():
        raise ValueError("mean_ci95 needs finite values")
    n = x.size
    if n == 0:
        return float("nan"), float("nan")
    mean = float(x.mean())
    if n == 1:
        return mean, float("nan")
    half = stats.t.ppf(0.975, n - 1) * x.std(ddof=1) / np.sqrt(n)
    return mean, float(half)
