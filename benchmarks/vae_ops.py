"""GroupNorm + SiLU and 3x3 convolutions at the SD VAE decoder's shapes (256 px output):
this project's modules (jitted) against torch (2 threads), median of 5 calls each; the
GroupNorm also as flax's `nnx.GroupNorm` with torch's two-pass variance (the models'
GroupNorm before `models/group_norm.py`).

    python benchmarks/vae_ops.py
    python benchmarks/vae_ops.py --decoder --repeats 5   # the whole SD VAE decoder, 3 arms
    python benchmarks/vae_ops.py --decoder --pause PID,PID   # those stopped while timing

`--decoder`: SD's VAE decoder (diffusers' random init, 32x32 latents -> 256 px, f32,
batch 1) three ways, timed in turn (ours, ours with flax's two-pass GroupNorm, diffusers)
so that a shared CPU's load falls on all three alike; prints medians and ratios.
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


SD_VAE = {"in_channels": 3, "out_channels": 3, "latent_channels": 4,
          "down_block_types": ["DownEncoderBlock2D"] * 4,
          "up_block_types": ["UpDecoderBlock2D"] * 4,
          "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2,
          "norm_num_groups": 32, "sample_size": 256}


def flax_group_norm(channels: int, groups: int, *, rngs: nnx.Rngs, dtype: jnp.dtype):
    """The VAE's GroupNorm before `models/group_norm.py`: flax's, torch's variance."""
    return nnx.GroupNorm(channels, num_groups=groups, epsilon=1e-6, use_fast_variance=False,
                         dtype=dtype, rngs=rngs)


def decoder(repeats: int, pause: tuple[int, ...] = ()) -> None:
    """The whole decoder: ours, ours with flax's GroupNorm, diffusers; in turn. `pause`:
    process ids stopped (SIGSTOP) for the timed calls only and continued after, even
    on an error (other jobs of one's own on a shared machine)."""
    import os
    import signal
    import tempfile
    from pathlib import Path
    from unittest import mock

    import diffusers

    from dreamlayer_jax.models import vae, vae_blocks

    torch.manual_seed(0)
    model = diffusers.AutoencoderKL(**SD_VAE).eval()
    z = np.random.default_rng(1).standard_normal((1, 4, 32, 32), np.float32)
    arms: dict[str, Callable[[], Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        for name, norm in (("ours", vae_blocks.group_norm), ("flax GroupNorm", flax_group_norm)):
            with (mock.patch.object(vae_blocks, "group_norm", norm),
                  mock.patch.object(vae, "group_norm", norm)):
                graph, state = nnx.split(vae.AutoencoderKL.from_pretrained(Path(tmp)))
            fn = jax.jit(lambda st, x, g=graph: nnx.merge(g, st).decode(x))
            args = (state, jnp.asarray(z.transpose(0, 2, 3, 1)))
            jax.block_until_ready(fn(*args))
            arms[name] = lambda fn=fn, args=args: jax.block_until_ready(fn(*args))
    latents = torch.from_numpy(z)

    def torch_call() -> Any:
        with torch.inference_mode():
            return model.decode(latents).sample

    arms["diffusers"] = torch_call
    torch_call()
    times: dict[str, list[float]] = {k: [] for k in arms}
    for pid in pause:
        os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(2 if pause else 0)
        print(f"load average {os.getloadavg()[0]:.1f} at the timed calls' start", flush=True)
        for _ in range(repeats):
            for name, call in arms.items():
                start = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - start)
    finally:
        for pid in pause:
            os.kill(pid, signal.SIGCONT)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    for name in arms:
        print(f"{name}: {med[name]:.0f} ms (runs {[round(t * 1e3) for t in times[name]]}), "
              f"/ diffusers {med[name] / med['diffusers']:.2f}")


def main() -> None:
    import argparse
    import os

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--decoder", action="store_true", help="the whole decoder, 3 arms")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--pause", default="",
                        help="--decoder: comma-separated pids stopped while timing")
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    if args.decoder:
        decoder(args.repeats, tuple(int(p) for p in args.pause.split(",") if p))
        print(f"load average {os.getloadavg()[0]:.1f} after")
        return
    print("| shape | GroupNorm+SiLU jax ms | flax two-pass ms | torch ms | ratio | "
          "conv3x3 jax ms | torch ms | ratio |\n|---|---|---|---|---|---|---|---|")
    for hw, c in SHAPES:
        x = np.random.default_rng(0).normal(size=(1, hw, hw, c)).astype(np.float32)
        norm, norm_params = jitted(group_norm(c, 32, 1e-6, rngs=nnx.Rngs(0),
                                              dtype=jnp.float32), jax.nn.silu)
        conv, conv_params = jitted(conv2d(c, c, 3, rngs=nnx.Rngs(0), dtype=jnp.float32))
        flax_norm, flax_params = jitted(nnx.GroupNorm(  # the model's GroupNorm until 2026-11-30
            c, num_groups=32, epsilon=1e-6, use_fast_variance=False, rngs=nnx.Rngs(0)),
            jax.nn.silu)
        jax_norm = median_ms(norm, norm_params, jnp.asarray(x))
        two_pass = median_ms(flax_norm, flax_params, jnp.asarray(x))
        jax_conv = median_ms(conv, conv_params, jnp.asarray(x))
        xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
        t_norm, t_conv = torch.nn.GroupNorm(32, c, eps=1e-6), torch.nn.Conv2d(c, c, 3, padding=1)
        with torch.inference_mode():
            torch_norm = median_ms(lambda v, m=t_norm: torch.nn.functional.silu(m(v)), xt)
            torch_conv = median_ms(t_conv, xt)
        print(f"| {hw}x{hw}x{c} | {jax_norm:.1f} | {two_pass:.1f} | {torch_norm:.1f} | "
              f"{jax_norm / torch_norm:.2f} | {jax_conv:.1f} | {torch_conv:.1f} | "
              f"{jax_conv / torch_conv:.2f} |", flush=True)


if __name__ == "__main__":
    main()
