"""This project's UNet (and VAE decoder) against diffusers' PyTorch models: same config,
same weights, same inputs.

The model is built in PyTorch with `torch.manual_seed(0)` (diffusers' own random init),
saved as a diffusers folder and loaded here with `from_pretrained`. JAX runs the jitted
forward in float32 (`jax.jit` over the `nnx.split` state, as the pipeline does; NHWC);
PyTorch runs eagerly (`.eval()`, `torch.inference_mode()`, NCHW, diffusers' default
attention processor, i.e. SDPA). The outputs are compared once (max abs diff), then the
two are timed alternately (jax, torch, jax, torch, ...) `--repeats` times each after one
warm-up call; reported: the medians, jax / torch (< 1: this project is faster), and the
time JAX took to lower and compile.

    python benchmarks/unet_vs_diffusers.py                       # small UNet
    python benchmarks/unet_vs_diffusers.py --vae --repeats 5     # + the small VAE decoder
    python benchmarks/unet_vs_diffusers.py --config sd15 --vae   # SD1.5's architecture
    python benchmarks/unet_vs_diffusers.py --config all --vae
    python benchmarks/unet_vs_diffusers.py --config sd15 --vae-only   # SD's VAE decoder alone

Configs: `small`: UNet block_out_channels (32, 64), 1 layer per block, cross-attention
dim 32, 16x16x4 latents; VAE (32, 64), 8 groups, 32x32 latents -> 64x64 pixels.
`sd15`: SD1.5's UNet ([320, 640, 1280, 1280], 2 layers per block, 8 heads, 768-d text)
at 32x32x4 latents; SD's VAE ([128, 256, 512, 512]) decoding 32x32 latents to 256x256.
UNet: batch 2, 77 text tokens, random weights; VAE: batch 1. PyTorch is the CPU wheel
and uses `torch.set_num_threads(os.cpu_count())` (`--torch-threads N` to change it: on a
machine where other work holds the cores, PyTorch's OpenMP threads can slow down many
times over); JAX runs on its default device, with its own default thread pool.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import format_table, sd15_unet  # noqa: E402

from dreamlayer_jax.models.unet import UNet2DConditionModel  # noqa: E402
from dreamlayer_jax.models.vae import AutoencoderKL  # noqa: E402

UNETS: dict[str, dict[str, Any]] = {
    "small": {"sample_size": 16, "in_channels": 4, "out_channels": 4,
              "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
              "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
              "block_out_channels": [32, 64], "layers_per_block": 1,
              "attention_head_dim": 8, "norm_num_groups": 16, "cross_attention_dim": 32},
    "sd15": sd15_unet(64),
}
VAES: dict[str, dict[str, Any]] = {
    "small": {"in_channels": 3, "out_channels": 3, "latent_channels": 4,
              "down_block_types": ["DownEncoderBlock2D"] * 2,
              "up_block_types": ["UpDecoderBlock2D"] * 2,
              "block_out_channels": [32, 64], "layers_per_block": 1,
              "norm_num_groups": 8, "sample_size": 64},
    "sd15": {"in_channels": 3, "out_channels": 3, "latent_channels": 4,
             "down_block_types": ["DownEncoderBlock2D"] * 4,
             "up_block_types": ["UpDecoderBlock2D"] * 4,
             "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2,
             "norm_num_groups": 32, "sample_size": 256},
}
LATENT_SIZE = {"small": {"unet": 16, "vae": 32}, "sd15": {"unet": 32, "vae": 32}}
UNET_BATCH, VAE_BATCH, TOKENS = 2, 1, 77


@dataclass
class Case:
    """One model in both frameworks: a jitted JAX function with its arguments, and a
    PyTorch call (no arguments) returning an NCHW tensor."""

    what: str
    jax_fn: Any
    jax_args: tuple[Any, ...]
    torch_call: Callable[[], Any]


def unet_case(torch: Any, diffusers: Any, name: str, folder: Path) -> Case:
    config = UNETS[name]
    torch.manual_seed(0)
    model = diffusers.UNet2DConditionModel(**config).eval()
    model.save_pretrained(folder, safe_serialization=True)
    processors = {type(p).__name__ for p in model.attn_processors.values()}
    size = LATENT_SIZE[name]["unet"]
    rng = np.random.default_rng(0)
    sample = rng.standard_normal((UNET_BATCH, 4, size, size), np.float32)
    timesteps = np.linspace(10.0, 900.0, UNET_BATCH, dtype=np.float32)
    text = rng.standard_normal((UNET_BATCH, TOKENS, config["cross_attention_dim"]), np.float32)

    graph, state = nnx.split(UNet2DConditionModel.from_pretrained(folder))
    fn = jax.jit(lambda st, x, t, c: nnx.merge(graph, st)(x, t, c, None))
    args = (state, jnp.asarray(sample.transpose(0, 2, 3, 1)), jnp.asarray(timesteps),
            jnp.asarray(text))
    tensors = [torch.from_numpy(a) for a in (sample, timesteps, text)]

    def torch_call() -> Any:
        with torch.inference_mode():
            return model(*tensors).sample

    what = f"{name} UNet B={UNET_BATCH} {size}x{size}x4, {TOKENS} tokens ({'/'.join(processors)})"
    return Case(what, fn, args, torch_call)


def vae_case(torch: Any, diffusers: Any, name: str, folder: Path) -> Case:
    config = VAES[name]
    torch.manual_seed(0)
    model = diffusers.AutoencoderKL(**config).eval()
    model.save_pretrained(folder, safe_serialization=True)
    size = LATENT_SIZE[name]["vae"]
    z = np.random.default_rng(1).standard_normal((VAE_BATCH, 4, size, size), np.float32)

    graph, state = nnx.split(AutoencoderKL.from_pretrained(folder))
    fn = jax.jit(lambda st, latents: nnx.merge(graph, st).decode(latents))
    args = (state, jnp.asarray(z.transpose(0, 2, 3, 1)))
    latents = torch.from_numpy(z)

    def torch_call() -> Any:
        with torch.inference_mode():
            return model.decode(latents).sample

    scale = 2 ** (len(config["block_out_channels"]) - 1)
    return Case(f"{name} VAE decode B={VAE_BATCH} {size}x{size} -> {size * scale}px",
                fn, args, torch_call)


def compare(case: Case, repeats: int) -> list[str]:
    """Compile, check agreement, warm up, then time jax and torch alternately."""
    start = time.perf_counter()
    compiled = case.jax_fn.lower(*case.jax_args).compile()
    compile_s = time.perf_counter() - start
    jax_out = np.asarray(jax.block_until_ready(compiled(*case.jax_args)))
    torch_out = case.torch_call().numpy().transpose(0, 2, 3, 1)
    diff = float(np.abs(jax_out - torch_out).max())
    scale = max(1.0, float(np.abs(torch_out).max()))
    flag = "" if diff <= 1e-3 * scale else "  <-- MISMATCH"
    print(f"{case.what}: max abs diff {diff:.2e} (|torch| max {scale:.2f}){flag}", flush=True)
    jax_times, torch_times = [], []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*case.jax_args))
        jax_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        case.torch_call()
        torch_times.append(time.perf_counter() - start)
    jax_ms = statistics.median(jax_times) * 1e3
    torch_ms = statistics.median(torch_times) * 1e3
    return [case.what, f"{jax_ms:.1f}", f"{torch_ms:.1f}", f"{jax_ms / torch_ms:.2f}",
            f"{compile_s:.1f}", f"{diff:.1e}"]


def thread_report(torch: Any) -> str:
    device = jax.devices()[0]
    if device.platform == "cpu":
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
        jax_threads = f"XLA CPU thread pool over the {cpus} CPUs available"
    else:
        jax_threads = f"{device.device_kind} x{jax.device_count()}"
    flags = os.environ.get("XLA_FLAGS", "")
    return (f"jax {jax.__version__} on {device.platform}: {jax_threads}"
            f"{f' (XLA_FLAGS={flags})' if flags else ''}; "
            f"torch {torch.__version__}: {torch.get_num_threads()} intra-op threads, "
            f"{torch.get_num_interop_threads()} inter-op; os.cpu_count()={os.cpu_count()}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=["small", "sd15", "all"], default="small")
    parser.add_argument("--vae", action="store_true", help="add the VAE decoder")
    parser.add_argument("--vae-only", action="store_true", help="the VAE decoder alone")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--torch-threads", type=int, default=os.cpu_count() or 1,
                        help="torch.set_num_threads (default: os.cpu_count())")
    args = parser.parse_args(argv)

    import diffusers  # torch and diffusers: this benchmark only
    import torch

    torch.set_num_threads(args.torch_threads)
    print(thread_report(torch), flush=True)
    names = ["small", "sd15"] if args.config == "all" else [args.config]
    headers = ["model", "jax ms (median)", "torch ms (median)", "jax / torch",
               "jax compile s", "max abs diff"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            builders = ([] if args.vae_only else [unet_case]) + (
                [vae_case] if args.vae or args.vae_only else [])
            for build in builders:
                folder = Path(tmp) / f"{name}-{build.__name__}"
                rows.append(compare(build(torch, diffusers, name, folder), args.repeats))
    print()
    print(format_table(headers, rows))
    print(f"\n{args.repeats} alternating runs each after one warm-up; "
          "jax / torch < 1 means this project is faster.")


if __name__ == "__main__":
    main()
