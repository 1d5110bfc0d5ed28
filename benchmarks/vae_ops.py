"""GroupNorm + SiLU and 3x3 convolutions at the SD VAE decoder's shapes (256 px output):
this project's modules (jitted) against torch (2 threads), median of 5 calls each.

    python benchmarks/vae_ops.py
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

import dreamlayer_jax  # noqa: F401  (applies the XLA flags before JAX starts its backends)
from dreamlayer_jax.models.resnet import conv2d, group_norm

SHAPES = [(256, 128), (128, 256), (64, 512), (32, 512)]  # decoder resolutions, channels


def median_ms(fn: Callable[..., Any], *args: Any, repeats: int = 5) -> float:
    """Median milliseconds of `fn(*args)` after one warm-up call."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def jitted(module: nnx.Module, post: Callable[[jax.Array], jax.Array] = lambda y: y):
    graph, params = nnx.split(module)
    return jax.jit(lambda p, x: post(nnx.merge(graph, p)(x))), params


def main() -> None:
    torch.set_num_threads(2)
    print("| shape | GroupNorm+SiLU jax ms | torch ms | ratio | conv3x3 jax ms | torch ms | "
          "ratio |\n|---|---|---|---|---|---|---|")
    for hw, c in SHAPES:
        x = np.random.default_rng(0).normal(size=(1, hw, hw, c)).astype(np.float32)
        norm, norm_params = jitted(group_norm(c, 32, 1e-6, rngs=nnx.Rngs(0),
                                              dtype=jnp.float32), jax.nn.silu)
        conv, conv_params = jitted(conv2d(c, c, 3, rngs=nnx.Rngs(0), dtype=jnp.float32))
        jax_norm = median_ms(norm, norm_params, jnp.asarray(x))
        jax_conv = median_ms(conv, conv_params, jnp.asarray(x))
        xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
        t_norm, t_conv = torch.nn.GroupNorm(32, c, eps=1e-6), torch.nn.Conv2d(c, c, 3, padding=1)
        with torch.inference_mode():
            torch_norm = median_ms(lambda v, m=t_norm: torch.nn.functional.silu(m(v)), xt)
            torch_conv = median_ms(t_conv, xt)
        print(f"| {hw}x{hw}x{c} | {jax_norm:.1f} | {torch_norm:.1f} | "
              f"{jax_norm / torch_norm:.2f} | {jax_conv:.1f} | {torch_conv:.1f} | "
              f"{jax_conv / torch_conv:.2f} |", flush=True)


if __name__ == "__main__":
    main()
