"""The memory planner's depth extrapolation against the exact trace, on SDXL itself.

    python benchmarks/memory_plan_depth.py                         # SDXL, 3 modes, 8x8
    python benchmarks/memory_plan_depth.py --modes full --sizes 1,4,128

`memory_plan.residual_split_by_depth` traces SDXL's gradient with every transformer 1
layer deep and with one level 2 deep (3 traces of 11-15 transformer layers) and
extrapolates linearly to SDXL's depths (1, 2, 10: 70 layers). Here the exact trace of
the whole 70-layer UNet is made too, at sizes `B,L,latent side`, and the relative error
of the extrapolation printed for the total residuals and the attention scores. No
compile, no allocation: CPU only, a few minutes per exact SDXL trace.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from dreamlayer_jax.cli.plan_memory import TRAIN_MODES, model_spec  # noqa: E402
from dreamlayer_jax.training import memory_plan as mp  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="sdxl")
    parser.add_argument("--modes", default="full,lora,paper K/V")
    parser.add_argument("--sizes", default="1,3,8", help="B,L,latent;B,L,latent;...")
    args = parser.parse_args()
    sizes = [tuple(int(x) for x in s.split(",")) for s in args.sizes.split(";")]
    print("| model | training | B | L | latent | exact GiB | extrapolated GiB | error "
          "| scores exact GiB | scores extrap. GiB | exact s | extrap. s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for mode in args.modes.split(","):
        train_params, dreamlayer = TRAIN_MODES[mode]
        spec = model_spec(args.model, dict(dreamlayer))
        for b, layers, latent in sizes:
            t0 = time.perf_counter()
            exact = mp.residual_split(spec, train_params, b, layers, latent)
            t1 = time.perf_counter()
            extra = mp.residual_split_by_depth(spec, train_params, b, layers, latent)
            t2 = time.perf_counter()
            err = (extra["total"] - exact["total"]) / exact["total"]
            print(f"| {args.model} | {mode} | {b} | {layers} | {latent} | "
                  f"{exact['total'] / mp.GIB:.3f} | {extra['total'] / mp.GIB:.3f} | "
                  f"{100 * err:+.3f}% | {exact['scores'] / mp.GIB:.3f} | "
                  f"{extra['scores'] / mp.GIB:.3f} | {t1 - t0:.0f} | {t2 - t1:.0f} |",
                  flush=True)


if __name__ == "__main__":
    main()
