"""Decomposition as evaluated: the true composites of held-out scenes split into layers
with their true prompts and boxes, scored against the true background and alphas.

- `background_psnr`: PSNR of the recovered background against the true one, per scene;
- `alpha_iou`: IoU of each recovered foreground's alpha (> 0.5) with the true one.

IRH plays no part in the box variant (its global layer is pinned to the picture).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

from dreamlayer_jax.eval.measures import alpha_iou, psnr
from dreamlayer_jax.eval.scenes import SEED_BASE, Pair
from dreamlayer_jax.pipeline.result import LayeredResult

DECOMPOSITION_MEASURES = ("background_psnr", "alpha_iou")


def decompose_all(pipe: Any, pairs: Sequence[Pair], *, steps: int = 20, guidance: float = 5.0,
                  seed: int = 0, caca: bool = True, lssa: bool = True,
                  decomposer: Callable[..., LayeredResult] | None = None
                  ) -> list[LayeredResult]:
    """Decompose each pair's ground-truth composite with its true prompts and boxes;
    `decomposer(image, layers, background, prompt=..., **kw)` defaults to
    `pipeline.decompose.decompose` with `pipe`."""
    if decomposer is None:
        from dreamlayer_jax.pipeline.decompose import decompose

        decomposer = functools.partial(decompose, pipe)
    return [
        decomposer(truth.composite, list(request.layers), request.background,
                   prompt=request.prompt, num_inference_steps=steps, guidance_scale=guidance,
                   seed=SEED_BASE * (int(seed) + 1) + i, caca=caca, lssa=lssa)
        for i, (request, truth) in enumerate(pairs)
    ]


def decomposition_values(pairs: Sequence[Pair], decompositions: Sequence[LayeredResult]
                         ) -> dict[str, list[float]]:
    """Per-scene background PSNR and per-foreground alpha IoU of decomposed true
    composites against their truth (`DECOMPOSITION_MEASURES`)."""
    values: dict[str, list[float]] = {name: [] for name in DECOMPOSITION_MEASURES}
    for (_, truth), recovered in zip(pairs, decompositions, strict=True):
        values["background_psnr"].append(psnr(recovered.background, truth.background))
        for layer, true_layer in zip(recovered.layers, truth.layers, strict=True):
            values["alpha_iou"].append(alpha_iou(layer, true_layer))
    return values
