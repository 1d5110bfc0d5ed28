"""Where a model's global layer disagrees with the composite of its layers, measured.

For held-out scenes (all mechanisms on) it splits each scene's coherence error
(`eval/coherence.py`): the share a per-channel lighting fit removes, the share on the
objects' outlines, in their bodies and in the background, the PSNR each region's
removal would reach, and the smooth (3x3-blurred) share. The ground truth's own split
(its lit composite against its unlit layers) is printed beside it.

    python benchmarks/coherence_parts.py [--model builtin:box] [--scenes 64] [--steps 10]
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
from common import add_sampling_args, load_pipeline  # noqa: E402

from dreamlayer_jax.eval.coherence import REGIONS, coherence_parts  # noqa: E402
from dreamlayer_jax.eval.measures import mean_ci95  # noqa: E402

ROWS = (("coherence PSNR (dB)", "psnr"), ("after the lighting fit (dB)", "lit_psnr"),
        ("share removed by the lighting fit", "lighting_share"),
        *((f"{r}: share of the pixels", f"{r}_pixels") for r in REGIONS),
        *((f"{r}: share of the residual", f"{r}_share") for r in REGIONS),
        *((f"PSNR with the {r} residual removed (dB)", f"psnr_without_{r}") for r in REGIONS),
        ("smooth share of the residual (3x3 blur)", "smooth_share"))


def table(columns: dict[str, list[dict[str, float]]]) -> str:
    """A markdown table: one row per `ROWS` entry, one `mean ± ci95` column per name."""
    lines = ["| | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for label, key in ROWS:
        cells = []
        for parts in columns.values():
            mean, half = mean_ci95([p[key] for p in parts])
            cells.append(f"{mean:.2f} ± {half:.2f}" if "dB" in label
                         else f"{mean:.3f} ± {half:.3f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_sampling_args(parser, scenes=64)
    parser.add_argument("--scheduler", default=None, help="default: the model's")
    for flag in ("--irh-start", "--irh-retain", "--irh-restart", "--irh-stop"):
        parser.add_argument(flag, type=float, default=None, help="default: the model's")
    args = parser.parse_args(argv)

    from dreamlayer_jax.eval.evaluate import generate
    from dreamlayer_jax.eval.scenes import held_out_scenes

    pipe = load_pipeline(args.model)
    if pipe is None:
        return 2
    pairs = held_out_scenes(args.scenes, args.seed, pipe.config.resolution,
                            max_foregrounds=min(3, pipe.max_foregrounds))
    settings = {k: getattr(args, k) for k in ("scheduler", "irh_start", "irh_retain",
                                              "irh_restart", "irh_stop")}

    def sample(*a: object, **k: object) -> list:
        return pipe(*a, **settings, **k)

    results = generate(sample, [request for request, _ in pairs], steps=args.steps,
                       guidance=args.guidance, seed=args.seed)
    generated = [coherence_parts(r.composite, r.background, r.layers) for r in results]
    truth = [coherence_parts(t.composite, t.background, t.layers) for _, t in pairs]
    chosen = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
                       for k, v in settings.items() if v is not None) or "the model's settings"
    print(f"{args.scenes} held-out scenes (seed {args.seed}), all mechanisms on, "
          f"guidance {args.guidance:g}, {chosen}\n")
    print(table({f"{args.model or 'builtin'} ({args.steps} steps)": generated,
                 "ground truth": truth}))
    lights = [t.meta["background_attributes"]["light"] for _, t in pairs]
    by_light = []
    for light in sorted(set(lights)):
        mine = [p for p, x in zip(generated, lights, strict=True) if x == light]
        by_light.append(f"{light} ({len(mine)}): {np.mean([p['psnr'] for p in mine]):.2f} dB, "
                        f"lit {np.mean([p['lit_psnr'] for p in mine]):.2f} dB")
    print("\nby light (generated): " + "; ".join(by_light))
    return 0


if __name__ == "__main__":
    sys.exit(main())
