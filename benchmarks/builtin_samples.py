"""Sample grids of a model (default: the built-in one) on held-out synthetic prompts.

    python benchmarks/builtin_samples.py --out docs/img/builtin_samples.png [--model PATH]

Each row: the layers on a checkerboard and the global picture (data.compositing.preview_strip),
for scenes from a seed stream the model was not trained on.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from dreamlayer_jax.data.compositing import preview_strip
from dreamlayer_jax.eval.scenes import held_out_scenes
from dreamlayer_jax.pipeline.dreamlayer import DreamLayerPipeline


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None)
    p.add_argument("--out", type=Path, default=Path("docs/img/builtin_samples.png"))
    p.add_argument("--scenes", type=int, default=6)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--scale", type=int, default=4, help="pixel magnification")
    args = p.parse_args(argv)
    pipe = DreamLayerPipeline.from_pretrained(args.model)
    pairs = held_out_scenes(args.scenes, seed=0, resolution=pipe.config.resolution,
                            max_foregrounds=pipe.max_foregrounds)
    rows = []
    for i, (scene, _) in enumerate(pairs):
        result = pipe(scene, num_inference_steps=args.steps, seed=i)
        strip = preview_strip(result.background, result.layers, result.composite)
        rows.append(strip)
        print(f"{i}: {scene.prompt}")
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 2), (0, width - r.shape[1]), (0, 0)), constant_values=255)
            for r in rows]
    grid = np.concatenate(rows).repeat(args.scale, 0).repeat(args.scale, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
