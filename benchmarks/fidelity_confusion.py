"""What the ground-truth classifier reads in a model's foregrounds, and how opaque they are.

For held-out scenes (all mechanisms on), each generated foreground's colour and shape as
the layer classifier reads them against what was asked (confusion counts), and the
alpha statistics of generated vs true foregrounds: peak alpha, mean alpha inside the
box, the share of alpha mass outside the box, and how far the visible extent (alpha >
0.05) reaches past the box and falls short of it. It answers, with numbers, whether a
low colour / shape accuracy comes from wrong objects, blobs read as one class, or
layers too faint to read, and where box IoU is lost.

    python benchmarks/fidelity_confusion.py [--model builtin:box] [--scenes 64] [--steps 10]
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
from common import add_sampling_args, load_pipeline  # noqa: E402

from dreamlayer_jax.data.synthetic_vocab import COLOURS, SHAPES  # noqa: E402
from dreamlayer_jax.eval.measures import (  # noqa: E402
    box_coverage,
    extent_gaps,
    layout_alignment,
)


def alpha_stats(layers: list[np.ndarray], boxes: list[tuple]) -> dict[str, float]:
    """Median peak alpha, mean alpha inside the box, share of alpha mass outside it
    (`eval.measures`: pixels weighted by the share of their area inside the box), and the
    mean pixels by which the visible extent reaches past the box and falls short of it
    (summed over the four sides, of the layers with any)."""
    peaks, inside, outside, gaps = [], [], [], []
    for layer, box in zip(layers, boxes, strict=True):
        alpha = layer[..., 3].astype(np.float64) / 255.0
        coverage = box_coverage(box, *alpha.shape)
        peaks.append(alpha.max())
        inside.append((alpha * coverage).sum() / coverage.sum())
        outside.append(1.0 - layout_alignment(alpha, box) if alpha.sum() > 0 else 0.0)
        gap = extent_gaps(alpha, box)
        if gap is not None:
            gaps.append(gap)
    over, short = np.mean(gaps, axis=0) if gaps else (np.nan, np.nan)
    return {"peak alpha (median)": float(np.median(peaks)),
            "mean alpha in box": float(np.mean(inside)),
            "alpha mass outside box": float(np.mean(outside)),
            "extent past box (px)": float(over), "extent short of box (px)": float(short)}


def confusion(asked: list[str], read: list[str | None], names: tuple[str, ...]) -> str:
    """A markdown table: one row per asked class, counts of what was read (`-`: the layer
    has no body, no pixel with alpha above 0.5, so the classifier reads nothing)."""
    counts = Counter(zip(asked, (r or "-" for r in read), strict=True))
    head = ["asked \\ read", *names, "-", "accuracy"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for a in names:
        row = [counts[(a, r)] for r in (*names, "-")]
        total = sum(row)
        acc = f"{counts[(a, a)] / total:.2f}" if total else ""
        lines.append("| " + " | ".join([a, *map(str, row), acc]) + " |")
    totals = Counter(r or "-" for r in read)
    lines.append("| **all (read)** | " + " | ".join(str(totals[r]) for r in (*names, "-"))
                 + f" | {np.mean([a == r for a, r in zip(asked, read)]):.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_sampling_args(parser, scenes=64)
    parser.add_argument("--guidance-min-timestep", type=float, default=None,
                        help="guide only at t >= this (default: the model's own)")
    parser.add_argument("--scheduler", default=None, help="default: the model's")
    args = parser.parse_args(argv)

    from dreamlayer_jax.eval.classifier import train_classifier
    from dreamlayer_jax.eval.evaluate import generate
    from dreamlayer_jax.eval.scenes import held_out_scenes

    pipe = load_pipeline(args.model)
    if pipe is None:
        return 2
    resolution = pipe.config.resolution
    classifier = train_classifier(resolution, seed=args.seed, picture=False)
    pairs = held_out_scenes(args.scenes, args.seed, resolution,
                            max_foregrounds=min(3, pipe.max_foregrounds))
    def sample(*a, **k):
        return pipe(*a, guidance_min_timestep=args.guidance_min_timestep,
                    scheduler=args.scheduler, **k)

    results = generate(sample, [request for request, _ in pairs], steps=args.steps,
                       guidance=args.guidance, seed=args.seed)
    asked = [a for _, truth in pairs for a in truth.meta["layer_attributes"]]
    generated = [layer for r in results for layer in r.layers]
    true_layers = [layer for _, truth in pairs for layer in truth.layers]
    boxes = [tuple(b) for _, truth in pairs for b in truth.boxes]
    reads = {}
    for name, layers in (("generated", generated), ("ground truth", true_layers)):
        read = reads[name] = classifier.predict(layers)
        print(f"\n### {name}: {len(layers)} foregrounds of {args.scenes} held-out scenes\n")
        for key, names, index in (("shape", SHAPES, 1), ("colour", tuple(COLOURS), 0)):
            print(f"{key}:\n")
            print(confusion([a[key] for a in asked], [r[index] if r else None for r in read],
                            names))
            print()
        stats = alpha_stats(layers, boxes)
        print(", ".join(f"{k} {v:.3f}" for k, v in stats.items()))
    bodies = [(a, r) for a, r in zip(asked, reads["generated"], strict=True) if r is not None]
    print(f"\nsummary: {args.scheduler or 'its own scheduler'}, steps {args.steps}, "
          f"guidance {args.guidance:g} at t >= "
          f"{args.guidance_min_timestep if args.guidance_min_timestep is not None else 'default'}: "
          f"no body {1 - len(bodies) / len(asked):.2f}; of the bodies colour "
          f"{np.mean([a['colour'] == r[0] for a, r in bodies]):.2f}, shape "
          f"{np.mean([a['shape'] == r[1] for a, r in bodies]):.2f}; all: colour "
          f"{len([1 for a, r in bodies if a['colour'] == r[0]]) / len(asked):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
