"""Quality measures against the synthetic world's exact ground truth (DESIGN.md section 7).

Pure, vectorised numpy. Images are `[H, W, C]`, uint8 in `[0, 255]` or float in `[0, 1]`
(uint8 is converted); boxes are `(x0, y0, x1, y1)` fractions of the image side.

- `layout_alignment`: the share of a foreground's alpha mass inside its box.
- `box_iou`: IoU of the visible part's bounding box (alpha > 0.05) with the asked box;
  `extent_gaps`: how far that bounding box reaches past the asked box, and falls short.
- `coherence_psnr`: PSNR of the global layer against the alpha-composite of the
  generated background and foregrounds (inter-layer coherence).
- `psnr`, `alpha_iou`: decomposition against ground truth (background, alpha masks).
- `mean_ci95`: a mean and its 95% confidence half-width (Student's t).
- `laplacian_energy`, `noise_ratio`: high-frequency energy (mean squared Laplacian) of
  pictures, and the ratio of generated to ground-truth energy with a bootstrap interval.
- `frechet_distance`, `fid`: the Frechet distance between two feature sets (closed-world
  FID: features from the ground-truth-trained classifiers, `eval/classifier.py`), with a
  bootstrap interval over the generated set.

PSNR convention: images in `[0, 1]` (peak 1), and identical images give `PSNR_CAP`
(100 dB) rather than infinity, so that means and confidence intervals stay finite; any
PSNR above the cap is reported as the cap.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from scipy import linalg, stats

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


def extent_gaps(alpha: np.ndarray, box: Box,
                threshold: float = BOX_ALPHA_THRESHOLD) -> tuple[float, float] | None:
    """Pixels by which the bounding box of `alpha > threshold` reaches past the asked
    `box` and falls short of it, each summed over the four sides (None if empty): where
    `box_iou` loses its area."""
    found = _mask_box(_alpha(alpha) > threshold)
    if found is None:
        return None
    h, w = np.asarray(alpha).shape[:2]
    scale = np.array([w, h, w, h], np.float64)
    a, b = np.asarray(found, np.float64) * scale, np.asarray(box, np.float64) * scale
    outward = np.array([b[0] - a[0], b[1] - a[1], a[2] - b[2], a[3] - b[3]])
    return float(np.maximum(outward, 0.0).sum()), float(np.maximum(-outward, 0.0).sum())


def psnr(image: np.ndarray, reference: np.ndarray) -> float:
    """PSNR in dB of `image` against `reference` (same shape), peak 1; capped at `PSNR_CAP`."""
    a, b = to_float(np.asarray(image)), to_float(np.asarray(reference))
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")
    return psnr_of_mse(float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


def psnr_of_mse(mse: float) -> float:
    """PSNR in dB of a mean squared error at peak 1, capped at `PSNR_CAP`."""
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


BOOTSTRAP_RESAMPLES = 1000


def laplacian_energy(image: np.ndarray) -> float:
    """Mean squared 4-neighbour Laplacian of a picture, per pixel and channel, in `[0, 1]`
    units (edges replicated).

    RGB `[H, W, 3]` is used as is; a straight-alpha RGBA layer `[H, W, 4]` as its
    premultiplied colour and its alpha, so colour under transparent pixels (invisible)
    does not count while noise in the alpha does. Per-pixel noise of standard deviation
    `s` adds about `20 s^2` (the Laplacian's kernel has squared norm 20).
    """
    x = to_float(np.asarray(image)).astype(np.float64)
    if x.ndim != 3 or x.shape[-1] not in (3, 4):
        raise ValueError(f"expected RGB or RGBA [H, W, C], got {x.shape}")
    if x.shape[-1] == 4:
        x = np.concatenate([x[..., :3] * x[..., 3:], x[..., 3:]], axis=-1)
    p = np.pad(x, ((1, 1), (1, 1), (0, 0)), mode="edge")
    lap = p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:] - 4.0 * x
    return float(np.mean(lap**2))


def ratio_ci95(numerator: Sequence[float] | np.ndarray, denominator: Sequence[float] |
               np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
               ) -> tuple[float, float]:
    """`(ratio, half_width)`: `sum(numerator) / sum(denominator)` over paired items and
    the half-width of its 95% percentile-bootstrap interval (items resampled in pairs;
    half of the 2.5..97.5 percentile span). A zero denominator gives `(nan, nan)`."""
    num = np.asarray(numerator, np.float64).ravel()
    den = np.asarray(denominator, np.float64).ravel()
    if num.shape != den.shape:
        raise ValueError(f"paired values differ in count: {num.size} vs {den.size}")
    if num.size == 0 or den.sum() <= 0:
        return float("nan"), float("nan")
    ratio = float(num.sum() / den.sum())
    if num.size == 1:
        return ratio, float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, num.size, (int(resamples), num.size))
    sums = den[idx].sum(axis=1)
    boot = num[idx].sum(axis=1)[sums > 0] / sums[sums > 0]
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return ratio, float((hi - lo) / 2.0)


def noise_ratio(generated: Sequence[np.ndarray], truth: Sequence[np.ndarray],
                resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """High-frequency energy of `generated` pictures over that of the paired ground truth
    (`laplacian_energy` summed over each set): 1 = as smooth as the truth, above 1 =
    noisier. Returns `(ratio, 95% half-width)` (`ratio_ci95`)."""
    if len(generated) != len(truth):
        raise ValueError(f"{len(generated)} generated pictures for {len(truth)} true ones")
    return ratio_ci95([laplacian_energy(g) for g in generated],
                      [laplacian_energy(t) for t in truth], resamples, seed)


def _moments(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(features, np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"expected features [N >= 2, D], got {x.shape}")
    return x.mean(axis=0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to features `a[N, D]` and `b[M, D]`:
    `|mu_a - mu_b|^2 + tr(C_a + C_b - 2 (C_a C_b)^(1/2))` (FID's formula), >= 0."""
    mu_a, cov_a = _moments(a)
    mu_b, cov_b = _moments(b)
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", linalg.LinAlgWarning)  # singular: few samples
        root, _ = linalg.sqrtm(cov_a @ cov_b, disp=False)
        if not np.isfinite(root).all():  # nudge both diagonals (as pytorch-fid does)
            offset = np.eye(cov_a.shape[0]) * 1e-6
            root, _ = linalg.sqrtm((cov_a + offset) @ (cov_b + offset), disp=False)
    root = np.real(root)
    value = float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b)
                  - 2.0 * np.trace(root))
    return max(0.0, value)


def fid(generated: np.ndarray, reference: np.ndarray, resamples: int = 200, seed: int = 0
        ) -> tuple[float, float]:
    """`(FID, 95% half-width)` of generated features `[N, D]` against reference features
    `[M, D]`; the interval resamples the generated set (bootstrap, the reference fixed).
    Small sets bias FID upwards: compare rows at equal `N`, and against the ground-truth
    row (true pictures of other scenes against the same reference)."""
    generated = np.asarray(generated, np.float64)
    value = frechet_distance(generated, reference)
    if generated.shape[0] < 3 or resamples < 2:
        return value, float("nan")
    rng = np.random.default_rng(seed)
    boot = [frechet_distance(generated[rng.integers(0, len(generated), len(generated))],
                             reference) for _ in range(int(resamples))]
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return value, float((hi - lo) / 2.0)
