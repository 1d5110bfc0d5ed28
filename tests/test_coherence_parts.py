"""`eval/coherence.py`: the split of a global layer's disagreement with its layers."""

import numpy as np
import pytest

from dreamlayer_jax.data.compositing import alpha_composite_float
from dreamlayer_jax.data.synthetic_render import apply_light
from dreamlayer_jax.eval.coherence import coherence_parts, region_masks
from dreamlayer_jax.eval.measures import PSNR_CAP, coherence_psnr

SIZE = 16


def _scene(seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    """A textured background `[16, 16, 3]` and one opaque square foreground in [4, 12)."""
    rng = np.random.default_rng(seed)
    background = rng.uniform(0.2, 0.8, (SIZE, SIZE, 3)).astype(np.float32)
    layer = np.zeros((SIZE, SIZE, 4), np.float32)
    layer[4:12, 4:12] = (0.9, 0.3, 0.1, 1.0)
    return background, [layer]


def test_a_relit_composite_is_all_lighting() -> None:
    background, layers = _scene()
    lit = apply_light(alpha_composite_float(background, layers) * 0.8 + 0.05, "daylight")
    parts = coherence_parts(lit, background, layers)
    assert parts["psnr"] == pytest.approx(coherence_psnr(lit, background, layers))
    assert parts["psnr"] < 30
    assert parts["lighting_share"] == pytest.approx(1.0, abs=1e-9)
    assert parts["lit_psnr"] == PSNR_CAP


def test_regions_of_a_square_partition_the_picture() -> None:
    _, layers = _scene()
    masks = region_masks(layers, SIZE, SIZE)
    total = sum(m.astype(int) for m in masks.values())
    assert (total == 1).all()
    # the square's edge pixels and the ring just outside them are the outline
    assert masks["outline"][3, 3:13].all() and masks["outline"][4, 4:12].all()
    assert masks["body"][5:11, 5:11].all() and masks["body"].sum() == 36
    assert masks["background"][0].all() and not masks["background"][3:13, 3:13].any()


def test_an_error_on_the_outline_is_counted_there_and_is_per_pixel() -> None:
    background, layers = _scene()
    global_rgb = alpha_composite_float(background, layers).astype(np.float64)
    rng = np.random.default_rng(1)
    outline = region_masks(layers, SIZE, SIZE)["outline"]
    global_rgb[outline] += rng.choice([-0.2, 0.2], size=(int(outline.sum()), 3))
    parts = coherence_parts(np.clip(global_rgb, 0, 1), background, layers)
    assert parts["outline_share"] > 0.95  # the lighting fit spreads a little
    assert parts["body_share"] + parts["background_share"] < 0.05
    assert parts["psnr_without_outline"] > parts["lit_psnr"] + 15
    assert parts["psnr_without_body"] == pytest.approx(parts["lit_psnr"], abs=0.05)
    assert parts["smooth_share"] < 0.3


def test_a_smooth_background_drift_is_smooth_and_in_the_background() -> None:
    background, layers = _scene()
    global_rgb = alpha_composite_float(background, layers).astype(np.float64)
    drift = np.zeros((SIZE, SIZE, 3))
    drift[:, :SIZE // 2 - 6] = (0.1, -0.1, 0.1)  # left columns 0-1: background only
    parts = coherence_parts(global_rgb + drift, background, layers)
    assert parts["background_share"] > 0.9
    assert parts["smooth_share"] > 0.5
