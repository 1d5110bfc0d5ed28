"""The quality targets read from an ablation table (no model: hand-made rows)."""

from dreamlayer_jax.eval.evaluate import DECOMPOSITION_ROW, AblationRow
from dreamlayer_jax.eval.targets import (
    ALL_ROW,
    INDEPENDENT_ROW,
    better_beyond_interval,
    check_targets,
    format_targets,
    mechanism_gains,
)


def rows() -> list[AblationRow]:
    independent = {"colour": (0.40, 0.05), "coherence_psnr": (7.0, 0.3),
                   "noise_global": (3.0, 0.5), "fid_composite": (100.0, 5.0)}
    caca = {"colour": (0.43, 0.05), "coherence_psnr": (11.0, 0.3),
            "noise_global": (3.2, 0.5), "fid_composite": (80.0, 5.0)}
    lssa = {"colour": (0.60, 0.05), "coherence_psnr": (7.2, 0.3),
            "noise_global": (0.5, 0.1), "fid_composite": (99.0, 5.0)}
    every = {"colour": (0.95, 0.02), "shape": (0.5, 0.05), "coherence_psnr": (26.0, 0.5),
             "noise_global": (1.2, 0.1), "box_iou": (0.7, 0.01)}
    lssa_caca = {"colour": (0.70, 0.02), "coherence_psnr": (7.0, 0.3)}
    return [AblationRow(INDEPENDENT_ROW, 10, 0, independent),
            AblationRow("+CACA", 10, 0, caca), AblationRow("+LSSA", 10, 0, lssa),
            AblationRow("+LSSA+CACA", 10, 0, lssa_caca),
            AblationRow(ALL_ROW, 10, 0, every),
            AblationRow(DECOMPOSITION_ROW, 10, 0, {"background_psnr": (20.0, 1.0),
                                                    "alpha_iou": (0.65, 0.03)})]


def test_targets_say_which_are_met_and_by_how_much_the_others_miss():
    checks = {c.target.measure: c for c in check_targets(rows(), boxes=True)}
    assert checks["colour"].met and checks["colour"].gap == 0.0
    assert checks["coherence_psnr"].met and checks["alpha_iou"].met
    assert checks["noise_global"].met  # 1.2 <= 1.5
    assert not checks["shape"].met and abs(checks["shape"].gap - 0.30) < 1e-9
    assert not checks["box_iou"].met and abs(checks["box_iou"].gap - 0.10) < 1e-9
    assert not checks["background_psnr"].met and checks["background_psnr"].gap == 2.0
    assert checks["noise_foreground"].value is None and checks["noise_foreground"].met is None


def test_box_targets_apply_only_to_the_box_variant():
    assert "box_iou" in {c.target.measure for c in check_targets(rows(), boxes=True)}
    assert "box_iou" not in {c.target.measure for c in check_targets(rows(), boxes=False)}


def test_a_gain_needs_the_intervals_apart_and_the_right_direction():
    assert better_beyond_interval("colour", (0.6, 0.05), (0.4, 0.05))
    assert not better_beyond_interval("colour", (0.43, 0.05), (0.40, 0.05))  # overlap
    assert not better_beyond_interval("colour", (0.2, 0.05), (0.4, 0.05))  # worse
    assert better_beyond_interval("fid_composite", (80.0, 5.0), (100.0, 5.0))
    assert not better_beyond_interval("fid_composite", (120.0, 5.0), (100.0, 5.0))
    assert better_beyond_interval("noise_global", (1.2, 0.1), (3.0, 0.5))
    # a ratio is judged by its factor from the truth's 1, either way
    assert better_beyond_interval("noise_global", (0.5, 0.1), (3.0, 0.5))
    assert not better_beyond_interval("noise_global", (0.3, 0.1), (2.0, 0.5))


def test_mechanism_gains_against_independent_layers():
    gains = mechanism_gains(rows())
    assert gains["+CACA"] == ["coherence_psnr", "fid_composite"]
    assert gains["+LSSA"] == ["colour", "noise_global"]
    assert "+IRH" not in gains  # no row, no claim
    # CACA on top of LSSA is judged against LSSA alone (colour 0.70 vs 0.60), not
    # against independent layers (coherence 7.0 vs 7.2 is no gain)
    assert gains["+LSSA+CACA"] == ["colour"]
    assert mechanism_gains([r for r in rows() if r.name != "+LSSA"]).get("+LSSA+CACA") is None
    text = format_targets(check_targets(rows(), boxes=True), gains)
    assert "| shape acc. | all (CACA+LSSA+IRH) | >= 0.8 | 0.500 ± 0.050 | no, 0.300 short |" \
        in text
    assert ("+LSSA beats independent layers beyond the intervals on: colour acc., "
            "noise global") in text
    assert "+LSSA+CACA beats +LSSA beyond the intervals on: colour acc." in text
