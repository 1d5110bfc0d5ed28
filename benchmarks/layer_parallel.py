"""The paper variant's all-layer LSSA over a sharded layer axis: all-gather vs ring.

    python benchmarks/layer_parallel.py [--repeats 5] [--sizes 8x64,8x256,16x256]

Times one jitted call of `joint_layer_attention` on one device against
`sharded_joint_layer_attention` with the layer axis split over n = 2, 4, 8 devices
("allgather" and "ring"), batch 1, 8 heads of 40 (SD1.5's first level), float32: the
fastest of the repeats (the least disturbed by other processes), and XLA's compiled
footprint per device (arguments + outputs + temporaries). Without accelerators it runs
on 8 fake CPU devices (XLA_FLAGS below): the "transfers" are memory copies between
threads sharing the same cores, so the timings compare the schedules' overheads, not
interconnects. About 2 minutes on a 2-core CPU.

Then it computes, without running anything, the bytes that cross the layer axis per
attention call and per denoising step (the UNet's up-block self-attentions, where the
paper applies LSSA) for SD1.5 and SDXL, in bfloat16, per sample (classifier-free
guidance doubles them).
"""

from __future__ import annotations

import argparse
import os
import sys
from functools import partial
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import compiled_memory_bytes, format_table, mib, time_fn  # noqa: E402

from dreamlayer_jax.parallel.layer_attention import (  # noqa: E402
    joint_layer_attention,
    sharded_joint_layer_attention,
)
from dreamlayer_jax.parallel.mesh import layer_sharding, make_mesh  # noqa: E402

HEADS, HEAD_DIM = 8, 40

# (name, latent side, [(tokens side, channels, self-attentions)]) of the up blocks.
UNETS = [
    ("SD1.5 512px", 64, [(16, 1280, 3), (32, 640, 3), (64, 320, 3)]),
    ("SDXL 1024px", 128, [(32, 1280, 3 * 10), (64, 640, 3 * 2)]),
]
BF16 = 2


def kv_bytes(layers: int, tokens: int, channels: int, itemsize: int = BF16) -> int:
    """K and V of all `layers` of one sample: each `tokens * channels` elements per layer."""
    return 2 * layers * tokens * channels * itemsize


def moved_per_device(layers: int, tokens: int, channels: int, axis: int) -> int:
    """Bytes one device receives over the layer axis in one call: `(n - 1) / n` of all K/V
    (all-gather in one collective, ring in n - 1 hops of one block each)."""
    return kv_bytes(layers, tokens, channels) * (axis - 1) // axis


def bytes_tables() -> tuple[str, str]:
    call_rows, step_rows = [], []
    for name, _, blocks in UNETS:
        for layers, axes in ((4, (4,)), (16, (4, 16))):
            for axis in axes:
                step = 0
                for side, channels, count in blocks:
                    per_dev = moved_per_device(layers, side * side, channels, axis)
                    step += count * per_dev
                    call_rows.append([name, layers, axis, f"{side}x{side}x{channels}", count,
                                      mib(kv_bytes(layers, side * side, channels)),
                                      mib(per_dev), mib(per_dev // (axis - 1)),
                                      mib(per_dev * axis)])
                step_rows.append([name, layers, axis, f"{step / 2**30:.2f}",
                                  f"{step * axis / 2**30:.2f}"])
    calls = format_table(["model", "L", "n", "self-attn (h x w x C)", "calls/step",
                          "all K/V MiB", "recv/device MiB", "ring hop MiB",
                          "axis total MiB"], call_rows)
    steps = format_table(["model", "L", "n", "recv/device GiB/step", "axis total GiB/step"],
                         step_rows)
    return calls, steps


def time_methods(sizes: list[tuple[int, int]], repeats: int) -> str:
    rows = []
    devices = jax.devices()
    for layers, tokens in sizes:
        shape = (1, layers, tokens, HEADS, HEAD_DIM)
        keys = jax.random.split(jax.random.key(0), 3)
        q, k, v = (jax.random.normal(c, shape) for c in keys)
        valid = jnp.arange(layers) < layers - 1  # one padded layer
        mask = jnp.broadcast_to(valid[None, None, :], (1, layers, layers))
        single = jax.jit(joint_layer_attention)
        args = jax.device_put((q, k, v, mask), devices[0])
        base = time_fn(single, *args, repeats=repeats).min_s
        rows.append([layers, tokens, 1, "single", f"{base * 1e3:.1f}", "1.00",
                     mib(compiled_memory_bytes(single, *args))])
        for axis in (2, 4, 8):
            if layers % axis or axis > len(devices):
                continue
            mesh = make_mesh(data=1, fsdp=1, layer=axis, devices=devices[:axis])
            placed = [jax.device_put(x, layer_sharding(mesh, x.ndim)) for x in (q, k, v, mask)]
            for method in ("allgather", "ring"):
                fn = jax.jit(partial(sharded_joint_layer_attention, mesh=mesh, method=method))
                t = time_fn(fn, *placed, repeats=repeats).min_s
                rows.append([layers, tokens, axis, method, f"{t * 1e3:.1f}",
                             f"{base / t:.2f}", mib(compiled_memory_bytes(fn, *placed))])
    return format_table(["L", "N", "n", "method", "ms/call (min)", "speed-up vs single",
                         "XLA footprint MiB"], rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", default="8x64,8x256,16x256",
                        help="comma-separated LxN (layers x tokens per layer)")
    args = parser.parse_args(argv)
    sizes = [tuple(int(x) for x in s.split("x")) for s in args.sizes.split(",")]
    print(f"jax {jax.__version__}, {jax.device_count()} {jax.default_backend()} devices, "
          f"batch 1, {HEADS} heads x {HEAD_DIM}, float32\n")
    print(time_methods(sizes, args.repeats))
    calls, steps = bytes_tables()
    print("\nBytes over the layer axis per attention call (bf16, one sample):\n")
    print(calls)
    print("\nPer denoising step (sum over the up blocks' self-attentions):\n")
    print(steps)


if __name__ == "__main__":
    main()
