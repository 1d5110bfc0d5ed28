"""Quality measures (DESIGN.md 7): hand-made cases with known answers, the fidelity
classifier on ground truth, and evaluate() / ablation() end to end on the tiny model."""

import contextlib
import math

import numpy as np
import pytest

from dreamlayer_jax.data.compositing import alpha_composite
from dreamlayer_jax.eval.classifier import train_classifier
from dreamlayer_jax.eval.evaluate import (
    ABLATION_SETTINGS,
    DECOMPOSITION_ROW,
    MEASURES,
    REFERENCE_ROW,
    SET_MEASURES,
    ablation,
    evaluate,
    format_table,
    held_out_scenes,
)
from dreamlayer_jax.eval.measures import (
    PSNR_CAP,
    alpha_iou,
    box_iou,
    coherence_psnr,
    extent_gaps,
    fid,
    frechet_distance,
    laplacian_energy,
    layout_alignment,
    mean_ci95,
    noise_ratio,
    psnr,
    ratio_ci95,
)
from dreamlayer_jax.eval.scenes import HELD_OUT_BASE

# ------------------------------------------------------------------------- measures


def _alpha(rows: slice, cols: slice, size: int = 8) -> np.ndarray:
    alpha = np.zeros((size, size), np.float32)
    alpha[rows, cols] = 1.0
    return alpha


def test_layout_alignment_counts_the_alpha_mass_inside_the_box():
    inside = _alpha(slice(2, 4), slice(2, 4))
    assert layout_alignment(inside, (0.25, 0.25, 0.5, 0.5)) == pytest.approx(1.0)
    whole = np.ones((8, 8), np.float32)
    assert layout_alignment(whole, (0.0, 0.0, 0.5, 1.0)) == pytest.approx(0.5)
    # A box edge through the middle of the only opaque pixel keeps half of its mass.
    pixel = _alpha(slice(3, 4), slice(2, 3))
    assert layout_alignment(pixel, (0.0, 0.0, 2.5 / 8, 1.0)) == pytest.approx(0.5)
    # The RGBA form reads the alpha channel; uint8 alpha is scaled to [0, 1].
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[:, :4, 3] = 255
    rgba[:, 4:, 3] = 85
    assert layout_alignment(rgba, (0.0, 0.0, 0.5, 1.0)) == pytest.approx(0.75)
    assert layout_alignment(np.zeros((8, 8)), (0.0, 0.0, 1.0, 1.0)) == 0.0


def test_box_iou_of_the_opaque_extent():
    alpha = _alpha(slice(2, 6), slice(0, 4))
    assert box_iou(alpha, (0.0, 0.25, 0.5, 0.75)) == pytest.approx(1.0)
    assert box_iou(alpha, (0.0, 0.25, 1.0, 0.75)) == pytest.approx(0.5)
    faint = np.full((8, 8), 0.04, np.float32)  # below the visibility threshold 0.05
    assert box_iou(faint, (0.0, 0.0, 1.0, 1.0)) == 0.0
    assert box_iou(faint + alpha, (0.0, 0.25, 0.5, 0.75)) == pytest.approx(1.0)


def test_extent_gaps_split_the_box_iou_loss_into_overshoot_and_shortfall():
    alpha = np.zeros((8, 8))
    alpha[2:6, 1:4] = 1.0  # columns 1-3, rows 2-5
    assert extent_gaps(alpha, (0.0, 0.25, 0.5, 0.75)) == (0.0, 1.0)  # 1 px short on the left
    assert extent_gaps(alpha, (0.25, 0.375, 0.5, 0.625)) == (3.0, 0.0)  # left, up, down past
    assert extent_gaps(alpha, (0.0, 0.375, 0.375, 0.75)) == (2.0, 1.0)  # up, right; left
    alpha[7, 7] = 0.04  # below the visibility threshold: not part of the extent
    assert extent_gaps(alpha, (0.125, 0.25, 0.5, 0.75)) == (0.0, 0.0)
    assert extent_gaps(np.zeros((8, 8)), (0.0, 0.0, 1.0, 1.0)) is None


def test_psnr_known_values_and_cap():
    image = np.random.default_rng(0).uniform(size=(8, 8, 3)).astype(np.float32)
    assert psnr(image, image) == PSNR_CAP
    assert psnr(np.full((4, 4, 3), 0.1, np.float32), np.zeros((4, 4, 3))) == pytest.approx(20.0)
    grey = np.full((4, 4, 3), 51, np.uint8)  # 51 / 255 = 0.2 -> mse 0.04
    assert psnr(grey, np.zeros((4, 4, 3), np.uint8)) == pytest.approx(-10 * math.log10(0.04))


def test_coherence_psnr_compares_the_global_layer_with_the_layers_composite():
    rng = np.random.default_rng(1)
    background = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    layer = rng.integers(0, 256, (8, 8, 4), dtype=np.uint8)
    flat = alpha_composite(background, [layer])
    # uint8 rounding of the composite leaves an error of at most half a level.
    assert coherence_psnr(flat, background, [layer]) > 50.0
    exact = alpha_composite(background.astype(np.float32) / 255, [layer])
    assert coherence_psnr(exact, background, [layer]) == PSNR_CAP
    assert coherence_psnr(255 - flat, background, [layer]) < 15.0


def test_alpha_iou_thresholds_at_one_half():
    left, top = _alpha(slice(None), slice(0, 4)), _alpha(slice(0, 4), slice(None))
    assert alpha_iou(left, left) == 1.0
    assert alpha_iou(left, top) == pytest.approx(1 / 3)
    assert alpha_iou(left * 0.5, left) == 0.0  # exactly 0.5 is transparent
    assert alpha_iou(np.zeros((8, 8)), np.zeros((8, 8))) == 1.0


def test_mean_ci95_uses_student_t():
    mean, half = mean_ci95([1.0, 2.0, 3.0, 4.0, 5.0])
    assert mean == pytest.approx(3.0)
    # t_{0.975, 4} = 2.776445, s = sqrt(2.5)
    assert half == pytest.approx(2.776445 * math.sqrt(2.5) / math.sqrt(5), rel=1e-5)
    assert mean_ci95([0.7] * 10) == (pytest.approx(0.7), pytest.approx(0.0))
    single = mean_ci95([2.0])
    assert single[0] == 2.0 and math.isnan(single[1])
    with pytest.raises(ValueError):
        mean_ci95([1.0, float("inf")])


# ----------------------------------------------------------------- scenes, classifier


def test_held_out_scenes_match_their_ground_truth_at_any_resolution():
    pairs = held_out_scenes(6, seed=3, resolution=8, max_foregrounds=2)
    for request, truth in pairs:
        assert truth.meta["seed"][0] == HELD_OUT_BASE + 3  # not a training seed
        assert truth.background.shape == (8, 8, 3) and 1 <= truth.num_foregrounds <= 2
        assert request.prompt == truth.prompt and request.background == truth.background_prompt
        assert [l.prompt for l in request.layers] == truth.layer_prompts
        assert [l.box for l in request.layers] == list(truth.boxes)
        for layer, box in zip(truth.layers, truth.boxes):
            assert layout_alignment(layer, box) == pytest.approx(1.0)
    fixed = held_out_scenes(3, seed=3, resolution=16, num_foregrounds=3)
    assert [t.num_foregrounds for _, t in fixed] == [3, 3, 3]
    again = held_out_scenes(6, seed=3, resolution=8, max_foregrounds=2)
    assert all(np.array_equal(a[1].composite, b[1].composite) for a, b in zip(pairs, again))


@pytest.fixture(scope="module")
def classifier32():
    return train_classifier(32, train_scenes=400, test_scenes=150)


def test_classifier_recognises_ground_truth_layers(classifier32):
    # Measured: colour 1.000, shape 0.997 (32 px; 400 training scenes, 150 test scenes).
    assert classifier32.accuracy["colour"] >= 0.95
    assert classifier32.accuracy["shape"] >= 0.85


def test_fidelity_checks_the_asked_colour_and_shape(classifier32):
    _, truth = held_out_scenes(1, seed=0, resolution=32, num_foregrounds=1)[0]
    layer, attrs = truth.layers[0], truth.meta["layer_attributes"][0]
    other_colour = "green" if attrs["colour"] != "green" else "red"
    other_shape = "ring" if attrs["shape"] != "ring" else "cross"
    assert classifier32.fidelity(layer, attrs["colour"], attrs["shape"]) == (True, True)
    assert classifier32.fidelity(layer, other_colour, other_shape) == (False, False)
    assert classifier32.fidelity(np.zeros_like(layer), attrs["colour"], attrs["shape"]) == (
        False, False)


def test_laplacian_energy_of_flat_and_noised_pictures():
    flat = np.full((16, 16, 3), 0.5)
    assert laplacian_energy(flat) == 0.0
    rng = np.random.default_rng(0)
    noised = flat + rng.normal(0.0, 0.05, flat.shape)
    # i.i.d. noise of std s: E[lap^2] = 20 s^2 inside (edges replicate, a little less)
    assert laplacian_energy(noised) == pytest.approx(20 * 0.05**2, rel=0.15)
    # RGBA: colour under zero alpha is invisible and does not count
    layer = np.zeros((16, 16, 4))
    layer[..., :3] = rng.uniform(0.0, 1.0, (16, 16, 3))
    assert laplacian_energy(layer) == 0.0


def test_noise_ratio_is_one_for_itself_and_above_one_when_noised():
    _, truth = held_out_scenes(1, seed=0, resolution=32)[0]
    pictures = [s.composite for _, s in held_out_scenes(6, seed=0, resolution=32)]
    assert noise_ratio(pictures, pictures) == (1.0, 0.0)
    rng = np.random.default_rng(1)
    noised = [np.clip(p / 255.0 + rng.normal(0.0, 0.05, p.shape), 0.0, 1.0) for p in pictures]
    ratio, half = noise_ratio(noised, pictures)
    assert ratio > 1.5 and ratio - half > 1.0
    layers = [layer for _, s in held_out_scenes(6, seed=0, resolution=32) for layer in s.layers]
    assert noise_ratio(layers, layers)[0] == 1.0
    assert math.isnan(ratio_ci95([1.0], [0.0])[0])


def test_frechet_distance_is_zero_for_a_set_with_itself_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    a = rng.normal(0.0, 1.0, (300, 6))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    distances = [frechet_distance(a + shift, a) for shift in (0.5, 1.0, 2.0)]
    # a shift d of the mean in every one of 6 dimensions adds 6 d^2
    assert distances == pytest.approx([6 * 0.25, 6.0, 24.0], rel=1e-6)
    b = rng.normal(0.0, 1.0, (300, 6))  # the same law, other samples: small, not zero
    assert 0.0 < frechet_distance(b, a) < 0.5
    value, half = fid(a + 1.0, a, resamples=50)
    assert value == pytest.approx(6.0) and 0.0 < half < 3.0


def test_fid_features_separate_true_from_corrupted_pictures(classifier32):
    from dreamlayer_jax.eval.evaluate import fid_reference

    pairs = held_out_scenes(40, seed=2, resolution=32)
    reference = fid_reference(classifier32, 32, scenes=120, seed=2)
    assert classifier32.picture is not None
    assert min(classifier32.picture.accuracy.values()) >= 0.7
    true_bg = classifier32.picture.features([t.background for _, t in pairs])
    rng = np.random.default_rng(0)
    noisy_bg = classifier32.picture.features(
        [np.clip(t.background / 255.0 + rng.normal(0, 0.1, t.background.shape), 0, 1)
         for _, t in pairs])
    assert frechet_distance(true_bg, reference.background) < frechet_distance(
        noisy_bg, reference.background)
    layers = [layer for _, t in pairs for layer in t.layers]
    recoloured = [layer[..., [2, 0, 1, 3]] for layer in layers]  # RGB -> BRG
    true_fg = classifier32.features(layers)
    assert true_fg.shape[0] == len(layers)
    assert frechet_distance(true_fg, reference.foreground) < frechet_distance(
        classifier32.features(recoloured), reference.foreground)


# ------------------------------------------------------------- end to end, tiny model


@pytest.fixture(scope="module")
def classifier8():
    return train_classifier(8, train_scenes=100, test_scenes=20)


def _check_measures(measures, names):
    # set measures (noise ratios, FIDs) need enough pictures: present when computable
    assert [m for m in measures if m not in SET_MEASURES] == [
        m for m in names if m not in SET_MEASURES]
    assert set(measures) <= set(names)
    for name, (mean, half) in measures.items():
        if name in SET_MEASURES:
            assert math.isnan(mean) or mean >= 0.0, name
            continue
        assert math.isfinite(mean) and math.isfinite(half) and half >= 0, name
    for name in ("layout", "box_iou", "colour", "shape", "alpha_iou"):
        if name in measures:
            assert 0.0 <= measures[name][0] <= 1.0, name


def test_evaluate_runs_end_to_end_on_the_tiny_model(tiny_pipe, classifier8):
    pairs = held_out_scenes(3, seed=0, resolution=8, max_foregrounds=1)
    measures = evaluate(tiny_pipe, pairs, steps=2, guidance=2.0, batch_size=2,
                        classifier=classifier8)
    _check_measures(measures, [m for m in MEASURES if not m.startswith("fid_")])
    assert {"noise_global", "noise_background", "noise_foreground"} <= set(measures)


@contextlib.contextmanager
def monkeypatch_call(pipe, calls):
    """Count the pipeline's sampling calls (`calls` gets one entry per call)."""
    original = type(pipe).__call__

    def counted(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    type(pipe).__call__ = counted
    try:
        yield
    finally:
        type(pipe).__call__ = original


def test_ablation_table_has_every_setting_and_foreground_count(tiny_pipe, classifier8):
    kwargs = dict(steps=2, guidance=2.0, batch_size=2, classifier=classifier8,
                  decomposition=True, decomposition_scenes=2, max_foregrounds=1,
                  foreground_counts=(1,), fid_scenes=20)
    reported = []
    rows = ablation(tiny_pipe, 2, **kwargs, on_row=reported.append)
    assert reported == rows  # each row handed over as soon as it was measured
    # an interrupted run's rows are taken as they are: nothing is sampled again
    sampled = []
    with monkeypatch_call(tiny_pipe, sampled):
        again = ablation(tiny_pipe, 2, **kwargs, done={r.name: r for r in rows[:-2]})
    assert all(a is b for a, b in zip(again, rows[:-2], strict=False))
    assert len(sampled) == 1  # the one remaining generation row, one batch of 2 scenes
    assert [r.name for r in again] == [r.name for r in rows]
    assert rows[0].measures["noise_global"] == (1.0, 0.0)  # the truth against itself
    assert "fid_composite" in rows[0].measures and "fid_composite" in rows[1].measures
    assert [r.name for r in rows] == [REFERENCE_ROW, *(name for name, _ in ABLATION_SETTINGS),
                                      "all, 1 foreground", DECOMPOSITION_ROW]
    decomposition = ["background_psnr", "alpha_iou"]
    no_decomposition = [m for m in MEASURES if m not in decomposition]
    for row in rows[:-1]:
        assert row.scenes == 2
        _check_measures(row.measures, no_decomposition)
    assert rows[-1].scenes == 2
    _check_measures(rows[-1].measures, decomposition)
    table = format_table(rows).splitlines()
    assert len(table) == 2 + len(rows)
    assert "coherence PSNR (dB)" in table[0] and "+LSSA" in table[5]


def test_study_measures_for_the_recipe_study(tiny_pipe, classifier8):
    from dreamlayer_jax.eval.evaluate import STUDY_MEASURES, study_measures

    full = study_measures(tiny_pipe, 3, steps=2, guidance=2.0, batch_size=2,
                          classifier=classifier8, fid_scenes=12)
    assert {"layout", "colour", "coherence_psnr", "noise_global", "fid_composite"} <= set(full)
    assert set(full) <= set(STUDY_MEASURES) | {f"truth:{m}" for m in STUDY_MEASURES}
    assert full["truth:noise_global"] == [1.0, 0.0] and full["truth:colour"][0] >= 0.0
    only = study_measures(tiny_pipe, 3, steps=2, guidance=2.0, batch_size=2,
                          classifier=classifier8, fid_scenes=12, composite_only=True)
    assert {m for m in only if not m.startswith("truth:")} == {"noise_global", "fid_composite"}


# ----------------------------------------------------------- scoring with a fake model


class _Config:
    resolution = 32


class GroundTruthPipe:
    """Answers every request with its ground truth: records the batches it is called with."""

    config, max_foregrounds = _Config(), 3

    def __init__(self, pairs):
        self.truth = {request.prompt: pair for pair in pairs for request in pair[:1]}
        self.batches = []

    def __call__(self, scenes, num_inference_steps, guidance_scale, seed, *, caca, lssa, irh):
        from dreamlayer_jax.eval.evaluate import truth_as_result

        self.batches.append(([len(s.layers) for s in scenes], list(seed)))
        return [truth_as_result(self.truth[s.prompt]) for s in scenes]

    def decompose(self, image, layers, background, *, prompt, **kwargs):
        from dreamlayer_jax.eval.evaluate import truth_as_result

        request, truth = self.truth[prompt]
        assert np.array_equal(image, truth.composite) and list(layers) == list(request.layers)
        return truth_as_result(self.truth[prompt])


def test_generate_batches_by_foreground_count_and_keeps_the_order():
    from dreamlayer_jax.eval.evaluate import generate

    pairs = held_out_scenes(7, seed=1, resolution=16)
    pipe = GroundTruthPipe(pairs)
    results = generate(pipe, [r for r, _ in pairs], batch_size=3, seed=2)
    assert [r.scene for r in results] == [r for r, _ in pairs]
    assert all(len(counts) == 3 for counts, _ in pipe.batches)  # the last batch is padded
    counts = [c for batch, _ in pipe.batches for c in batch]
    assert counts[:7] == sorted(counts[:7])
    seeds = {s for _, batch in pipe.batches for s in batch}
    assert len(seeds) == 7  # one seed per scene, the same in every row


def test_ground_truth_scores_perfectly_on_layout_fidelity_and_decomposition(classifier32):
    pairs = held_out_scenes(12, seed=4, resolution=32)
    pipe = GroundTruthPipe(pairs)
    measures = evaluate(pipe, pairs, batch_size=5, classifier=classifier32,
                        decomposer=pipe.decompose)
    assert measures["layout"] == (pytest.approx(1.0), pytest.approx(0.0))
    assert measures["colour"][0] == 1.0 and measures["shape"][0] >= 0.9
    assert measures["background_psnr"][0] == PSNR_CAP and measures["alpha_iou"][0] == 1.0
    assert measures["noise_global"] == measures["noise_foreground"] == (1.0, 0.0)
    # The true composite is lit (sunset / night) while its layers are not.
    assert 10.0 < measures["coherence_psnr"][0] < PSNR_CAP
