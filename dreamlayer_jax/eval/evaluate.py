"""Evaluate a DreamLayer pipeline on held-out synthetic scenes, and its ablation table.

    pairs = held_out_scenes(200, seed=0, resolution=pipe.config.resolution)
    scores = evaluate(pipe, pairs, steps=20)           # measure -> (mean, ci95 half-width)
    rows = ablation(pipe, 200)                          # independent / +CACA / +LSSA / ...
    print(format_table(rows))

Measures (DESIGN.md section 7), each averaged with a Student-t 95% interval over all
foregrounds (`layout`, `box_iou`, `colour`, `shape`, `alpha_iou`) or all scenes
(`coherence_psnr`, `background_psnr`):

- `layout`: share of each generated foreground's alpha mass inside its box.
- `box_iou`: IoU of each foreground's visible extent (alpha > 0.05) with its box
  (does the object fill it?). Both skip foregrounds asked without a box.
- `colour`, `shape`: share of foregrounds the ground-truth-trained classifier
  recognises as the asked colour / shape (layer fidelity).
- `coherence_psnr`: PSNR of the global layer against the composite of the layers.
- `background_psnr`, `alpha_iou`: decomposition of the ground-truth composite with the
  true prompts and boxes against the true background and alphas (`eval.decomposition`).

Set-level measures (`set_measures`), each with a 95% bootstrap interval:

- `noise_*`: high-frequency energy (mean squared Laplacian, `measures.noise_ratio`) of
  the generated global layer / background / foregrounds over the ground truth's of the
  same scenes: 1 = as smooth as the truth.
- `fid_*`: closed-world FID (`measures.fid`) of the generated global layers /
  backgrounds / foregrounds against true pictures of `FID_REFERENCE_SCENES` other scenes
  (stream `FID_BASE`), in the feature space of the ground-truth-trained classifiers
  (`LayerClassifier.features`, `PictureClassifier.features`). The ground-truth row's FID
  (true pictures of the evaluated scenes) is the floor that finite sets allow.

Every row of an ablation uses the same scenes and the same seeds (paired comparison);
its first row scores the ground truth itself, the reference for each measure.

Note that the pipeline clears a foreground's alpha outside its box dilated by the
model's `clear_margin`, so `layout` can only fall below 1 by mass inside that margin
(none at the default 0, where `box_iou` then measures how well the layer fills its box).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dreamlayer_jax.eval.classifier import LayerClassifier, train_classifier
from dreamlayer_jax.eval.decomposition import (
    DECOMPOSITION_MEASURES,
    decompose_all,
    decomposition_values,
)
from dreamlayer_jax.eval.measures import (
    box_iou,
    coherence_psnr,
    fid,
    layout_alignment,
    mean_ci95,
    noise_ratio,
)
from dreamlayer_jax.eval.scenes import SEED_BASE, Pair, held_out_scenes, synthetic_scenes
from dreamlayer_jax.pipeline.result import LayeredResult
from dreamlayer_jax.pipeline.scene import Scene

__all__ = ["ABLATION_SETTINGS", "DECOMPOSITION_ROW", "MEASURES", "REFERENCE_ROW",
           "STUDY_MEASURES", "AblationRow", "FidReference", "ablation", "cell",
           "evaluate", "fid_reference", "format_table", "generate",
           "held_out_scenes", "reference_measures", "score", "set_measures", "study_measures"]

Log = Callable[[str], None]

# measure -> (column title, digits)
MEASURES: dict[str, tuple[str, int]] = {
    "layout": ("layout (mass in box)", 3),
    "box_iou": ("box IoU", 3),
    "colour": ("colour acc.", 3),
    "shape": ("shape acc.", 3),
    "coherence_psnr": ("coherence PSNR (dB)", 2),
    "background_psnr": ("decomp. bg PSNR (dB)", 2),
    "alpha_iou": ("decomp. alpha IoU", 3),
    "noise_global": ("noise global", 2),
    "noise_background": ("noise bg", 2),
    "noise_foreground": ("noise fg", 2),
    "fid_composite": ("FID global", 2),
    "fid_background": ("FID bg", 2),
    "fid_foreground": ("FID fg", 2),
}
SET_MEASURES = ("noise_global", "noise_background", "noise_foreground", "fid_composite",
                "fid_background", "fid_foreground")
# the recipe study's columns (no decomposition: it costs as much as generation)
STUDY_MEASURES: dict[str, tuple[str, int]] = {
    m: MEASURES[m] for m in MEASURES if m not in DECOMPOSITION_MEASURES}
FID_BASE = 30_000  # the FID reference's seed stream (apart from training, held-out, classifier)
FID_REFERENCE_SCENES = 500
DECOMPOSITION_ROW = "decomposition (CACA + LSSA)"

ABLATION_SETTINGS: tuple[tuple[str, dict[str, bool]], ...] = (
    ("independent layers", {"caca": False, "lssa": False, "irh": False}),
    ("+CACA", {"caca": True, "lssa": False, "irh": False}),
    ("+LSSA", {"caca": False, "lssa": True, "irh": False}),
    ("+IRH", {"caca": False, "lssa": False, "irh": True}),
    # CACA on top of LSSA: in the paper variant the context maps act only through LSSA's
    # blend, so "+CACA" alone samples exactly as independent layers and CACA's own
    # effect is this row against "+LSSA"
    ("+LSSA+CACA", {"caca": True, "lssa": True, "irh": False}),
    ("all (CACA+LSSA+IRH)", {"caca": True, "lssa": True, "irh": True}),
)

REFERENCE_ROW = "ground truth (reference)"


@dataclass
class AblationRow:
    """One line of the ablation table."""

    name: str
    scenes: int
    foregrounds: int
    measures: dict[str, tuple[float, float]]
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class FidReference:
    """Classifier features of true pictures of scenes from the `FID_BASE` stream:
    `composite`, `background` `[N, D]` (picture classifier) and `foreground` `[M, D']`
    (layer classifier)."""

    composite: np.ndarray
    background: np.ndarray
    foreground: np.ndarray


def fid_reference(classifier: LayerClassifier, resolution: int, *, scenes: int =
                  FID_REFERENCE_SCENES, seed: int = 0, max_foregrounds: int = 3,
                  num_foregrounds: int | None = None) -> FidReference | None:
    """The FID reference features (None when the classifier has no picture classifier)."""
    if classifier.picture is None:
        return None
    truths = synthetic_scenes(scenes, FID_BASE + int(seed), resolution, max_foregrounds,
                              num_foregrounds)
    return FidReference(
        composite=classifier.picture.features([t.composite for t in truths]),
        background=classifier.picture.features([t.background for t in truths]),
        foreground=classifier.features([layer for t in truths for layer in t.layers]))


def set_measures(pairs: Sequence[Pair], results: Sequence[LayeredResult],
                 classifier: LayerClassifier, reference: FidReference | None,
                 composite_only: bool = False) -> dict[str, tuple[float, float]]:
    """Noise ratios and closed-world FIDs of `results` (see the module docstring), each
    `(value, 95% half-width)`; FIDs only with a `reference`. With `composite_only`, only
    the global layer's."""
    truths = [truth for _, truth in pairs]
    out = {"noise_global": noise_ratio([r.composite for r in results],
                                       [t.composite for t in truths])}
    generated_fg = [layer for r in results for layer in r.layers]
    if not composite_only:
        out["noise_background"] = noise_ratio([r.background for r in results],
                                              [t.background for t in truths])
        true_fg = [layer for t in truths for layer in t.layers]
        out["noise_foreground"] = noise_ratio(generated_fg, true_fg)
    if reference is not None and classifier.picture is not None:
        out["fid_composite"] = fid(classifier.picture.features([r.composite for r in results]),
                                   reference.composite)
        if not composite_only:
            out["fid_background"] = fid(
                classifier.picture.features([r.background for r in results]),
                reference.background)
            features = classifier.features(generated_fg)
            if len(features) >= 2:
                out["fid_foreground"] = fid(features, reference.foreground)
    return out


def generate(pipe: Any, requests: Sequence[Scene], *, steps: int = 20, guidance: float = 5.0,
             batch_size: int = 8, seed: int = 0, caca: bool = True, lssa: bool = True,
             irh: bool = True) -> list[LayeredResult]:
    """Sample every request, scene `i` with seed `SEED_BASE * (seed + 1) + i`.

    Scenes are batched by their number of foregrounds (less padding, at most one compile
    per layer count) and a short last batch is filled with repeats, so every call has the
    same batch shape. Results come back in the requests' order.
    """
    seeds = [SEED_BASE * (int(seed) + 1) + i for i in range(len(requests))]
    order = sorted(range(len(requests)), key=lambda i: len(requests[i].layers))
    results: list[LayeredResult | None] = [None] * len(requests)
    size = max(1, int(batch_size))
    for start in range(0, len(order), size):
        chunk = order[start : start + size]
        padded = chunk + [chunk[-1]] * (size - len(chunk))
        out = pipe([requests[i] for i in padded], num_inference_steps=steps,
                   guidance_scale=guidance, seed=[seeds[i] for i in padded],
                   caca=caca, lssa=lssa, irh=irh)
        for i, result in zip(chunk, out):
            results[i] = result
    return [r for r in results if r is not None]


def truth_as_result(pair: Pair) -> LayeredResult:
    """The ground truth dressed as a generated result (its composite as the global layer):
    scoring it gives the measures' reference values."""
    request, truth = pair
    return LayeredResult(scene=request, background=truth.background, layers=list(truth.layers),
                         composite=truth.composite, info={"mode": "ground truth"})


def reference_measures(pairs: Sequence[Pair], classifier: LayerClassifier,
                       reference: FidReference | None = None
                       ) -> dict[str, tuple[float, float]]:
    """The measures of the ground truth itself (no model): the best a generator can do on
    layout and fidelity, and the coherence of the true lit composite with its unlit
    layers (below the cap wherever the light is not daylight)."""
    truths = [truth_as_result(pair) for pair in pairs]
    values = score(pairs, truths, classifier)
    out = {name: mean_ci95(values[name]) for name in MEASURES
           if name not in DECOMPOSITION_MEASURES and name not in SET_MEASURES}
    out.update(set_measures(pairs, truths, classifier, reference))
    return out


def score(pairs: Sequence[Pair], results: Sequence[LayeredResult],
          classifier: LayerClassifier,
          decompositions: Sequence[LayeredResult] | None = None) -> dict[str, list[float]]:
    """Per-foreground / per-scene values of every measure (see the module docstring)."""
    values: dict[str, list[float]] = {name: [] for name in MEASURES}
    for (request, truth), result in zip(pairs, results, strict=True):
        attributes = truth.meta["layer_attributes"]
        found = classifier.predict(result.layers)
        for layer, asked, attrs, guess in zip(result.layers, request.layers, attributes, found):
            if asked.box is not None:  # a layer asked without a box has no layout to meet
                values["layout"].append(layout_alignment(layer, asked.box))
                values["box_iou"].append(box_iou(layer, asked.box))
            values["colour"].append(float(guess is not None and guess[0] == attrs["colour"]))
            values["shape"].append(float(guess is not None and guess[1] == attrs["shape"]))
        values["coherence_psnr"].append(
            coherence_psnr(result.composite, result.background, result.layers))
    if decompositions:
        values.update(decomposition_values(pairs, decompositions))
    return values


def evaluate(pipe: Any, scenes: Sequence[Pair], *, steps: int = 20, guidance: float = 5.0,
             batch_size: int = 8, caca: bool = True, lssa: bool = True, irh: bool = True,
             seed: int = 0, classifier: LayerClassifier | None = None,
             decomposition: bool = True, reference: FidReference | None = None,
             decomposer: Callable[..., LayeredResult] | None = None
             ) -> dict[str, tuple[float, float]]:
    """Generate `scenes` (`(request, ground truth)` pairs) and measure them.

    Returns measure -> `(mean, 95% half-width)` (see `MEASURES`); the decomposition
    measures only with `decomposition=True`, the FIDs only with a `reference`. Without a
    `classifier` one is trained at the pipeline's resolution (seconds).
    """
    classifier = classifier or train_classifier(pipe.config.resolution)
    requests = [request for request, _ in scenes]
    results = generate(pipe, requests, steps=steps, guidance=guidance, batch_size=batch_size,
                       seed=seed, caca=caca, lssa=lssa, irh=irh)
    decompositions = None
    if decomposition:
        decompositions = decompose_all(pipe, scenes, steps=steps, guidance=guidance,
                                       seed=seed, caca=caca, lssa=lssa, decomposer=decomposer)
    values = score(scenes, results, classifier, decompositions)
    names = [m for m in MEASURES if (decomposition or m not in DECOMPOSITION_MEASURES)
             and m not in SET_MEASURES]
    out = {name: mean_ci95(values[name]) for name in names}
    out.update(set_measures(scenes, results, classifier, reference))
    return out


def study_measures(pipe: Any, n: int, *, steps: int = 20, guidance: float = 5.0,
                   batch_size: int = 8, seed: int = 0, composite_only: bool = False,
                   classifier: LayerClassifier | None = None,
                   fid_scenes: int = FID_REFERENCE_SCENES) -> dict[str, list[float]]:
    """The recipe study's measures (`STUDY_MEASURES`): all mechanisms on, `n` mixed
    held-out scenes, no decomposition; measure -> `[mean, 95% half-width]` (JSON-ready).
    With `composite_only` (a model trained on the global layer alone) only the global
    layer's measures. Keys `truth:<measure>` hold the ground truth's values."""
    resolution = pipe.config.resolution
    max_fg = min(3, pipe.max_foregrounds)
    classifier = classifier or train_classifier(resolution)
    pairs = held_out_scenes(n, seed, resolution, max_foregrounds=max_fg)
    reference = fid_reference(classifier, resolution, scenes=fid_scenes, seed=seed,
                              max_foregrounds=max_fg)
    results = generate(pipe, [r for r, _ in pairs], steps=steps, guidance=guidance,
                       batch_size=batch_size, seed=seed)
    values = score(pairs, results, classifier)
    out = {} if composite_only else {
        m: mean_ci95(values[m]) for m in STUDY_MEASURES if m not in SET_MEASURES}
    out.update(set_measures(pairs, results, classifier, reference, composite_only))
    truth = reference_measures(pairs, classifier, reference)
    return {m: [float(v[0]), float(v[1])] for m, v in out.items()} | {
        f"truth:{m}": [float(v[0]), float(v[1])] for m, v in truth.items()}


def ablation(pipe: Any, n: int, *, seed: int = 0, steps: int = 20, guidance: float = 5.0,
             batch_size: int = 8, classifier: LayerClassifier | None = None,
             decomposition: bool = True, max_foregrounds: int = 3,
             foreground_counts: Sequence[int] = (1, 2, 3), reference: bool = True,
             count_scenes: int | None = None, decomposition_scenes: int | None = None,
             fid_scenes: int = FID_REFERENCE_SCENES, log: Log | None = None,
             done: dict[str, AblationRow] | None = None,
             on_row: Callable[[AblationRow], None] | None = None) -> list[AblationRow]:
    """The ablation table: each of `ABLATION_SETTINGS` on the same `n` held-out scenes
    (1 to `max_foregrounds` foregrounds, at most the model's limit), then all mechanisms
    on `n` scenes with exactly `k` foregrounds for each `k` in `foreground_counts`. With
    `reference`, a first row scores the ground truth of the mixed scenes itself. With
    `decomposition`, a last row decomposes the true composites of the first
    `decomposition_scenes` (default `n`) mixed scenes with CACA and LSSA on (IRH plays
    no part in it). `count_scenes` (default `n`) sizes the foreground-count rows,
    `fid_scenes` the FID references (one per foreground count). Rows named in `done`
    (measured by an earlier, interrupted run with the same arguments) are taken as they
    are; `on_row` is called with each row as soon as it is measured."""
    resolution = pipe.config.resolution
    max_fg = min(int(max_foregrounds), pipe.max_foregrounds)
    classifier = classifier or train_classifier(resolution)
    common = {"steps": steps, "guidance": guidance, "batch_size": batch_size, "seed": seed,
              "classifier": classifier, "decomposition": False}
    plans: list[tuple[str, dict[str, bool], list[Pair], int]] = []
    mixed = held_out_scenes(n, seed, resolution, max_foregrounds=max_fg)
    for name, switches in ABLATION_SETTINGS:
        plans.append((name, switches, mixed, 0))
    for k in foreground_counts:
        pairs = held_out_scenes(count_scenes or n, seed, resolution, max_foregrounds=max_fg,
                                num_foregrounds=k)
        plans.append((f"all, {k} foreground{'s' if k > 1 else ''}", ABLATION_SETTINGS[-1][1],
                      pairs, k))
    # FID references: true pictures of other scenes with the same foreground counts,
    # drawn when a row first needs them (a resumed run's kept rows need none)
    fid_refs: dict[int, FidReference] = {}

    def fid_ref(k: int) -> FidReference:
        if k not in fid_refs:
            fid_refs[k] = fid_reference(classifier, resolution, scenes=fid_scenes, seed=seed,
                                        max_foregrounds=max_fg, num_foregrounds=k or None)
        return fid_refs[k]

    done = done or {}
    rows = []

    def add(name: str, measure: Callable[[], AblationRow]) -> None:
        if name in done:
            rows.append(done[name])
            if log:
                log(f"{name}: measured before")
            return
        rows.append(measure())
        if on_row:
            on_row(rows[-1])

    if reference:
        add(REFERENCE_ROW, lambda: AblationRow(
            REFERENCE_ROW, len(mixed), 0, reference_measures(mixed, classifier, fid_ref(0))))
    for name, switches, pairs, k in plans:
        def measure(name=name, switches=switches, pairs=pairs, k=k) -> AblationRow:
            if log:
                log(f"{name}: {len(pairs)} scenes")
            values = evaluate(pipe, pairs, **switches, **common, reference=fid_ref(k))
            return AblationRow(name, len(pairs), k, values, dict(switches))

        add(name, measure)
    if decomposition:
        def decompose_row() -> AblationRow:
            pairs = mixed[: decomposition_scenes or n]
            if log:
                log(f"decomposition: {len(pairs)} scenes")
            recovered = decompose_all(pipe, pairs, steps=steps, guidance=guidance, seed=seed)
            values = score(pairs, [truth_as_result(p) for p in pairs], classifier, recovered)
            return AblationRow(DECOMPOSITION_ROW, len(pairs), 0,
                               {m: mean_ci95(values[m]) for m in DECOMPOSITION_MEASURES},
                               {"caca": True, "lssa": True})

        add(DECOMPOSITION_ROW, decompose_row)
    return rows


def cell(value: tuple[float, float], digits: int) -> str:
    """`mean ± half` with `digits` decimals ("n/a" for a NaN mean)."""
    mean, half = value
    if not math.isfinite(mean):
        return "n/a"
    if not math.isfinite(half):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {half:.{digits}f}"


def format_table(rows: Sequence[AblationRow]) -> str:
    """A markdown table: one row per setting, `mean ± 95% half-width` per measure."""
    names = [m for m in MEASURES if any(m in row.measures for row in rows)]
    header = ["setting", "scenes", *(MEASURES[m][0] for m in names)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row.name, str(row.scenes)]
        cells += [cell(row.measures[m], MEASURES[m][1]) if m in row.measures else "" for m in
                  names]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
