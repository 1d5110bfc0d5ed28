"""LayerDiffuse's transparent VAE decoder (UNet1024, real config, random weights): this
project's `TransparentVAEDecoder` against the PyTorch reference built from diffusers'
blocks (`tests/layerdiffuse_reference.py`), on the CPU.

Same weights (the reference's state dict loaded with `load_torch_state_into`), same
inputs (RGB in [0, 1] and a 4-channel latent at 1/8 resolution, batch 1). JAX runs the
jitted forward in float32 (`jax.jit` over the `nnx.split` state) on its default thread
pool; PyTorch runs eagerly (`torch.inference_mode()`, NCHW) with `--torch-threads`
threads (default 2). With TTA both run LayerDiffuse's 8-way flip/rotation median
(`decode_augmented` / `estimate_augmented`). The outputs are compared once, then the two
are timed alternately `--repeats` times after one warm-up call; reported: the medians,
jax / torch (< 1: this project is faster) and JAX's first call (compile + run).

    python benchmarks/layerdiffuse_decoder.py                          # 512 and 1024, TTA at 512
    python benchmarks/layerdiffuse_decoder.py --sizes 1024 --tta-sizes 1024 --repeats 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import torch
from flax import nnx

import dreamlayer_jax  # noqa: F401  (applies the XLA flags before JAX starts its backends)
from dreamlayer_jax.io import load_torch_state_into
from dreamlayer_jax.models.transparent_vae import TransparentVAEDecoder, UNet1024Config

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from layerdiffuse_reference import UNet1024, estimate_augmented, randomise_  # noqa: E402


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(size: int, tta: bool, jax_fns: dict, torch_model: torch.nn.Module,
        repeats: int) -> dict[str, float]:
    rng = np.random.default_rng(size)
    rgb = rng.uniform(size=(1, size, size, 3)).astype(np.float32)
    latent = rng.normal(size=(1, size // 8, size // 8, 4)).astype(np.float32)
    pixel = torch.from_numpy(rgb.transpose(0, 3, 1, 2).copy())
    lat = torch.from_numpy(latent.transpose(0, 3, 1, 2).copy())
    fn, params = jax_fns["tta" if tta else "single"]

    def run_jax() -> np.ndarray:
        return np.asarray(jax.block_until_ready(fn(params, rgb, latent)))

    def run_torch() -> np.ndarray:
        with torch.inference_mode():
            y = (estimate_augmented(torch_model, pixel, lat) if tta
                 else torch_model(pixel, lat).clip(0, 1))
        return y.numpy().transpose(0, 2, 3, 1)

    first = time.perf_counter()
    ours = run_jax()
    first = time.perf_counter() - first
    theirs = run_torch()
    theirs = np.concatenate([theirs[..., 1:], theirs[..., :1]], axis=-1)  # -> RGBA
    diff = float(np.abs(ours - theirs).max())
    jax_times, torch_times = [], []
    for _ in range(repeats):
        jax_times.append(timed(run_jax))
        torch_times.append(timed(run_torch))
    j, t = statistics.median(jax_times), statistics.median(torch_times)
    return {"jax_s": j, "torch_s": t, "ratio": j / t, "first_s": first, "diff": diff}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="512,1024", help="comma-separated pixel sizes")
    p.add_argument("--tta-sizes", default="512", help="sizes also timed with the 8-way TTA")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--torch-threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.torch_threads)
    torch_model = randomise_(UNet1024(), seed=0)
    state = {k: v.numpy() for k, v in torch_model.state_dict().items()}
    decoder = load_torch_state_into(
        lambda rngs: TransparentVAEDecoder(UNet1024Config(), rngs=rngs), state,
        what="UNet1024")
    graph, params = nnx.split(decoder)
    jax_fns = {
        "single": (jax.jit(lambda p, x, z: nnx.merge(graph, p)(x, z)), params),
        "tta": (jax.jit(lambda p, x, z: nnx.merge(graph, p).decode_augmented(x, z)), params),
    }
    sizes = [int(s) for s in args.sizes.split(",") if s]
    tta_sizes = {int(s) for s in args.tta_sizes.split(",") if s}
    print(f"jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), {args.repeats} repeats")
    print("| size | TTA | jax s | torch s | jax / torch | jax first call s | max abs diff |")
    print("|---|---|---|---|---|---|---|")
    for size in sizes:
        for tta in (False, True) if size in tta_sizes else (False,):
            r = run(size, tta, jax_fns, torch_model, args.repeats)
            print(f"| {size} | {'8-way' if tta else 'no'} | {r['jax_s']:.2f} | "
                  f"{r['torch_s']:.2f} | {r['ratio']:.2f} | {r['first_s']:.1f} | "
                  f"{r['diff']:.1e} |", flush=True)


if __name__ == "__main__":
    main()
