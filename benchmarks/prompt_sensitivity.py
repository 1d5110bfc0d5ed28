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
- sampler-free, per timestep: the denoiser's error on the foreground with a wrong shape
  (colour) word over its error with the right one, from the true noisy scene: above 1
  where the model uses the word;
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
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
from common import add_sampling_args, load_pipeline, truth_latents  # noqa: E402

from dreamlayer_jax.data.synthetic_vocab import (  # noqa: E402
    COLOURS,
    SHAPES,
    SIZES,
    global_prompt,
    layer_prompt,
)
from dreamlayer_jax.eval.measures import box_coverage  # noqa: E402
from dreamlayer_jax.pipeline.scene import Layer, Scene  # noqa: E402

TIMESTEPS = (50, 200, 400, 600, 800)


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


def denoiser_gain(pipe, pairs: list, timesteps: tuple[int, ...], seed: int) -> dict:
    """Sampler-free: the held-out truth noised to `t`, denoised once with the foreground's
    true prompt and with each wrong shape (colour) word; per `t`, the foreground slot's
    error on the model's target with the wrong words over the error with the right one
    (mean over scenes and wrong words). Above 1 where the word lowers the error: the
    denoiser uses it."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from dreamlayer_jax.schedulers.forward_process import add_noise, get_target

    sched, prediction = pipe.scheduler, pipe.scheduler.config.prediction_type
    b = len(pairs)
    x0 = truth_latents(pipe, [truth for _, truth in pairs], 3)  # [B, 3, h, w, c]
    graph, params = nnx.split(pipe.unet)

    @jax.jit
    def fg_error(params, ctx, x_t, target, t):
        out = nnx.merge(graph, params)(x_t, jnp.broadcast_to(t[:, None], (b, 3)), ctx)
        return jnp.mean((out[:, 1] - target[:, 1]) ** 2, axis=(1, 2, 3))  # [B]

    def contexts(key: str, names) -> list:
        """Per name, the batch's context with every scene's foreground word replaced."""
        out = []
        for name in names:
            scenes = [variant(r, t.meta["layer_attributes"][0], t.background_prompt,
                              **{key: name}) for r, t in pairs]
            out.append(pipe.layer_context(scenes)[0])
        return out

    right = pipe.layer_context([r for r, _ in pairs])[0]
    gains: dict = {}
    for key, names in (("shape", SHAPES), ("colour", list(COLOURS))):
        asked = np.array([[t.meta["layer_attributes"][0][key] == n for n in names]
                          for _, t in pairs])  # [B, names]
        # a colour swap onto the background's colour is a valid prompt; counted as wrong
        wrong_ctx = contexts(key, names)
        for t in timesteps:
            noise = jax.random.normal(jax.random.fold_in(jax.random.key(seed), t), x0.shape)
            tt = jnp.full((b,), t, jnp.int32)
            x_t = add_noise(sched, x0, noise, tt)
            target = get_target(sched, x0, noise, tt, prediction)
            base = np.asarray(fg_error(params, right, x_t, target, tt))
            errs = np.stack([np.asarray(fg_error(params, c, x_t, target, tt))
                             for c in wrong_ctx], axis=1)  # [B, names]
            ratio = [errs[i][~asked[i]].mean() / base[i] for i in range(b)]
            gains[(key, t)] = (float(np.mean(ratio)),
                               float(1.96 * np.std(ratio, ddof=1) / np.sqrt(b)))
    return gains


def mean_ci(values) -> str:
    v = np.asarray(values, np.float64)
    return f"{v.mean():.3f} ± {1.96 * v.std(ddof=1) / np.sqrt(len(v)):.3f}"


def sampled_table(pipe, pairs: list, steps: int, guidance: float, seed: int) -> list[str]:
    """The sampled measures of the module docstring, as markdown table rows."""
    from dreamlayer_jax.eval.classifier import train_classifier

    res = pipe.config.resolution
    classifier = train_classifier(res, seed=seed, picture=False)
    # every scene's requests: 8 shapes, the colours but the background's, 8 seeds
    jobs: list[tuple[int, str, str, Scene, int]] = []  # (scene, kind, asked, request, seed)
    for i, (request, truth) in enumerate(pairs):
        attrs, bg = truth.meta["layer_attributes"][0], truth.background_prompt
        base = 1000 * (seed + 1) + i
        jobs += [(i, "shape", s, variant(request, attrs, bg, shape=s), base) for s in SHAPES]
        colours = [c for c in COLOURS if c != truth.meta["background_attributes"]["colour"]]
        jobs += [(i, "colour", c, variant(request, attrs, bg, colour=c), base) for c in colours]
        jobs += [(i, "seed", attrs["shape"], request, base + 7919 * k) for k in range(8)]
    layers: list[np.ndarray] = []
    for start in range(0, len(jobs), 8):
        chunk = jobs[start : start + 8]
        chunk = chunk + [chunk[-1]] * (8 - len(chunk))
        out = pipe([j[3] for j in chunk], num_inference_steps=steps, guidance_scale=guidance,
                   seed=[j[4] for j in chunk])
        layers += [r.layers[0] for r in out]
    layers = layers[: len(jobs)]
    reads = classifier.predict(layers)

    def euclid(a, b) -> float:
        return float(np.linalg.norm(a - b))

    rows: dict[str, list[float]] = {k: [] for k in ("shape", "seed_alpha", "truth", "colour",
                                                   "seed_rgb")}
    hits: dict[str, list[bool]] = {"shape": [], "colour": []}
    for i, (_, truth) in enumerate(pairs):
        box, size_name = truth.boxes[0], truth.meta["layer_attributes"][0]["size"]
        dist = alpha_distance(box_coverage(tuple(box), res, res))
        by = {k: [(j, layer, read) for j, layer, read in zip(jobs, layers, reads, strict=True)
                  if j[0] == i and j[1] == k] for k in ("shape", "colour", "seed")}
        alphas = {k: [layer[..., 3] / 255.0 for _, layer, _ in v] for k, v in by.items()}
        rgb = {k: [body_colour(layer) for _, layer, _ in v] for k, v in by.items()}
        rows["shape"].append(pairwise(alphas["shape"], dist))
        rows["seed_alpha"].append(pairwise(alphas["seed"], dist))
        rows["truth"].append(pairwise(truth_shapes(box, size_name, res), dist))
        rows["colour"].append(pairwise(rgb["colour"], euclid))
        rows["seed_rgb"].append(pairwise(rgb["seed"], euclid))
        for kind, index in (("shape", 1), ("colour", 0)):
            hits[kind] += [read[index] == j[2] for j, _, read in by[kind] if read is not None]
    shape_ratio = np.asarray(rows["shape"]) / np.maximum(rows["seed_alpha"], 1e-9)
    colour_ratio = np.asarray(rows["colour"]) / np.maximum(rows["seed_rgb"], 1e-9)
    out = [f"| alpha change, shape word swapped (same seed) | {mean_ci(rows['shape'])} |",
           f"| alpha change, seed changed (same prompt) | {mean_ci(rows['seed_alpha'])} |",
           f"| shape effect / seed effect | {mean_ci(shape_ratio)} |",
           f"| alpha change between the true shapes (reference) | {mean_ci(rows['truth'])} |",
           f"| body colour change, colour word swapped | {mean_ci(rows['colour'])} |",
           f"| body colour change, seed changed | {mean_ci(rows['seed_rgb'])} |",
           f"| colour effect / seed effect | {mean_ci(colour_ratio)} |"]
    for kind, chance in (("shape", 1 / len(SHAPES)), ("colour", 1 / 7)):
        out.append(f"| {kind} read as asked, of {len(hits[kind])} variants with a body "
                   f"(chance {chance:.2f}) | {np.mean(hits[kind]):.3f} |")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_sampling_args(parser, scenes=16)
    parser.add_argument("--denoiser-only", action="store_true",
                        help="only the sampler-free table (seconds, not minutes)")
    args = parser.parse_args(argv)

    from dreamlayer_jax.eval.scenes import held_out_scenes

    pipe = load_pipeline(args.model)
    if pipe is None:
        return 2
    pairs = held_out_scenes(args.scenes, args.seed, pipe.config.resolution, num_foregrounds=1)
    print(f"## {args.model or 'builtin'}: {len(pairs)} one-foreground held-out scenes\n")
    print(f"Sampled ({args.steps} steps, guidance {args.guidance:g}) and in text space:\n")
    print("| measure | value |\n|---|---|")
    if not args.denoiser_only:
        print("\n".join(sampled_table(pipe, pairs, args.steps, args.guidance, args.seed)))
    request, truth = pairs[0]
    attrs, bg = truth.meta["layer_attributes"][0], truth.background_prompt
    for key, names in (("shape", SHAPES), ("colour", list(COLOURS))):
        prompts = [variant(request, attrs, bg, **{key: n}).layers[0].prompt for n in names]
        print(f"| text embedding spread, {key} words | {text_spread(pipe, prompts):.3f} |")
    gains = denoiser_gain(pipe, pairs, TIMESTEPS, args.seed)
    print("\nOne denoising step from the true noisy scene: the foreground's error with a "
          "wrong word over its error with the right one (1 = the word is not used)\n")
    print("| t | " + " | ".join(str(t) for t in TIMESTEPS) + " |")
    print("|---|" + "---|" * len(TIMESTEPS))
    for key in ("shape", "colour"):
        print(f"| {key} word | " + " | ".join(f"{gains[(key, t)][0]:.3f} ± "
                                              f"{gains[(key, t)][1]:.3f}" for t in TIMESTEPS)
              + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
