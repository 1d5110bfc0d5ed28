"""Does a model read the shape word? Swap one word of a foreground's prompt, keep the seed.

For held-out scenes with one foreground, the foreground is sampled (all mechanisms on)
with its prompt's shape word replaced by each of the 8 shapes, its colour word by each
colour but the background's, and, as the yardstick, with its own prompt under 8 seeds.
Per scene it measures:

- **shape effect**: the mean pairwise difference of the foreground's alpha `[h, w]`
  between the shape variants (mean |a_i - a_j| per pixel over the box), against the
  **seed effect**, the same difference between seeds. Their ratio is 1 where the shape
  word changes the layer no more than the noise draw does;
- **colour effect**: the mean pairwise distance of the body's alpha-weighted mean RGB
  between the colour variants, against the same distance between seeds;
- the classifier's reads of the variants (shape of the shape variants, colour of the
  colour variants, over the layers with a body);
- in text space: the mean pairwise distance of the text encoder's output `[T, D]`
  between the shape-swapped prompts and between the colour-swapped ones, relative to its
  norm, which says whether the frozen encoder keeps the words apart.

The ground truth's shape effect (the 8 shapes rendered at the object's centre and size)
is the reference for the first line.

    python benchmarks/prompt_sensitivity.py [--model builtin:box] [--scenes 16] [--steps 10]
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from dreamlayer_jax.data.synthetic_vocab import (  # noqa: E402
    COLOURS,
    SHAPES,
    SIZES,
    global_prompt,
    layer_prompt,
)
from dreamlayer_jax.errors import DreamLayerError  # noqa: E402
from dreamlayer_jax.eval.measures import box_coverage  # noqa: E402
from dreamlayer_jax.pipeline.scene import Layer, Scene  # noqa: E402


def pairwise(values: list[np.ndarray], distance) -> float:
    """Mean `distance(a, b)` over the unordered pairs of `values`."""
    return float(np.mean([distance(a, b) for a, b in itertools.combinations(values, 2)]))


def alpha_distance(coverage: np.ndarray):
    """Mean |a - b| of two alpha maps `[h, w]` over the box (pixels weighted by coverage)."""
    return lambda a, b: float((np.abs(a - b) * coverage).sum() / coverage.sum())


def body_colour(layer: np.ndarray) -> np.ndarray:
    """The alpha-weighted mean RGB `[3]` in [0, 1] of an RGBA layer `[h, w, 4]`."""
    alpha = layer[..., 3:4].astype(np.float64) / 255.0
    return (layer[..., :3] / 255.0 * alpha).sum(axis=(0, 1)) / max(alpha.sum(), 1e-6)


def variant(request: Scene, attributes: dict[str, str], background: str, **change: str) -> Scene:
    """`request` with its one foreground's attributes changed (`shape=`, `colour=`)."""
    a = {**attributes, **change}
    prompt = layer_prompt(a["size"], a["colour"], a["shape"])
    box = request.layers[0].box
    return Scene(prompt=global_prompt([prompt], background), background=background,
                 layers=(Layer(prompt, box),))


def truth_shapes(box: tuple, size_name: str, resolution: int) -> list[np.ndarray]:
    """The 8 shapes' alpha `[h, w]`, rendered at the box's centre with the size's middle
    radius (what a model that reads the shape word would change)."""
    from dreamlayer_jax.data.synthetic_render import render_object

    x0, y0, x1, y1 = (v * resolution for v in box)
    radius = float(np.mean(SIZES[size_name])) * resolution
    return [render_object(resolution, shape, np.ones(3), ((x0 + x1) / 2, (y0 + y1) / 2),
                          radius, 0.0, shadow=False)[..., 3] / 255.0 for shape in SHAPES]


def text_spread(pipe, prompts: list[str]) -> float:
    """Mean pairwise Frobenius distance of the prompts' text embeddings `[T, D]`, over
    their mean norm."""
    emb = [np.asarray(e, np.float64) for e in pipe.encode_prompts(prompts)]
    norm = float(np.mean([np.linalg.norm(e) for e in emb]))
    return pairwise(emb, lambda a, b: float(np.linalg.norm(a - b))) / norm


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model folder or builtin[:box|:paper]")
    parser.add_argument("--scenes", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from dreamlayer_jax.eval.classifier import train_classifier
    from dreamlayer_jax.eval.scenes import held_out_scenes
    from dreamlayer_jax.pipeline.dreamlayer import DreamLayerPipeline

    try:
        pipe = DreamLayerPipeline.from_pretrained(args.model)
    except DreamLayerError as exc:
        print(f"error: cannot load {args.model or 'the built-in model'}: {exc}", file=sys.stderr)
        return 2
    res = pipe.config.resolution
    classifier = train_classifier(res, seed=args.seed, picture=False)
    pairs = held_out_scenes(args.scenes, args.seed, res, num_foregrounds=1)

    # every scene's requests: 8 shapes, the colours but the background's, 8 seeds
    jobs: list[tuple[int, str, str, Scene, int]] = []  # (scene, kind, asked, request, seed)
    for i, (request, truth) in enumerate(pairs):
        attrs, bg = truth.meta["layer_attributes"][0], truth.background_prompt
        seed = 1000 * (args.seed + 1) + i
        jobs += [(i, "shape", s, variant(request, attrs, bg, shape=s), seed) for s in SHAPES]
        colours = [c for c in COLOURS if c != truth.meta["background_attributes"]["colour"]]
        jobs += [(i, "colour", c, variant(request, attrs, bg, colour=c), seed) for c in colours]
        jobs += [(i, "seed", attrs["shape"], request, seed + 7919 * k) for k in range(8)]
    layers: list[np.ndarray] = []
    for start in range(0, len(jobs), 8):
        chunk = jobs[start : start + 8]
        chunk = chunk + [chunk[-1]] * (8 - len(chunk))
        out = pipe([j[3] for j in chunk], num_inference_steps=args.steps,
                   guidance_scale=args.guidance, seed=[j[4] for j in chunk])
        layers += [r.layers[0] for r in out]
    layers = layers[: len(jobs)]
    reads = classifier.predict(layers)

    rows = {k: [] for k in ("shape", "seed_alpha", "truth", "colour", "seed_rgb")}
    hits = {"shape": [], "colour": []}
    for i, (_, truth) in enumerate(pairs):
        box, size_name = truth.boxes[0], truth.meta["layer_attributes"][0]["size"]
        dist = alpha_distance(box_coverage(tuple(box), res, res))
        mine = [(j, layer, read) for j, layer, read in zip(jobs, layers, reads, strict=True)
                if j[0] == i]
        by = {k: [(j, layer, read) for j, layer, read in mine if j[1] == k]
              for k in ("shape", "colour", "seed")}
        alphas = {k: [layer[..., 3] / 255.0 for _, layer, _ in v] for k, v in by.items()}
        rgb = {k: [body_colour(layer) for _, layer, _ in v] for k, v in by.items()}
        euclid = lambda a, b: float(np.linalg.norm(a - b))  # noqa: E731
        rows["shape"].append(pairwise(alphas["shape"], dist))
        rows["seed_alpha"].append(pairwise(alphas["seed"], dist))
        rows["truth"].append(pairwise(truth_shapes(box, size_name, res), dist))
        rows["colour"].append(pairwise(rgb["colour"], euclid))
        rows["seed_rgb"].append(pairwise(rgb["seed"], euclid))
        for kind, index in (("shape", 1), ("colour", 0)):
            hits[kind] += [read[index] == j[2] for j, _, read in by[kind] if read is not None]
    request, truth = pairs[0]
    attrs, bg = truth.meta["layer_attributes"][0], truth.background_prompt
    def prompts(key, names):
        return [variant(request, attrs, bg, **{key: n}).layers[0].prompt for n in names]

    def mean_ci(values: list[float]) -> str:
        v = np.asarray(values)
        return f"{v.mean():.3f} ± {1.96 * v.std(ddof=1) / np.sqrt(len(v)):.3f}"

    print(f"## {args.model or 'builtin'}: {len(pairs)} one-foreground held-out scenes, "
          f"{args.steps} steps, guidance {args.guidance:g}\n")
    print("| measure | value |\n|---|---|")
    print(f"| alpha change, shape word swapped (same seed) | {mean_ci(rows['shape'])} |")
    print(f"| alpha change, seed changed (same prompt) | {mean_ci(rows['seed_alpha'])} |")
    ratio = np.asarray(rows["shape"]) / np.maximum(rows["seed_alpha"], 1e-9)
    print(f"| shape effect / seed effect | {mean_ci(list(ratio))} |")
    print(f"| alpha change between the true shapes (reference) | {mean_ci(rows['truth'])} |")
    print(f"| body colour change, colour word swapped | {mean_ci(rows['colour'])} |")
    print(f"| body colour change, seed changed | {mean_ci(rows['seed_rgb'])} |")
    ratio = np.asarray(rows["colour"]) / np.maximum(rows["seed_rgb"], 1e-9)
    print(f"| colour effect / seed effect | {mean_ci(list(ratio))} |")
    for kind, chance in (("shape", 1 / len(SHAPES)), ("colour", 1 / 7)):
        print(f"| {kind} read as asked, of {len(hits[kind])} variants with a body "
              f"(chance {chance:.2f}) | {np.mean(hits[kind]):.3f} |")
    for key, names in (("shape", SHAPES), ("colour", list(COLOURS))):
        print(f"| text embedding spread, {key} words | "
              f"{text_spread(pipe, prompts(key, names)):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
