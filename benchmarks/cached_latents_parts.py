"""Where the raw train step's time goes: the encoders against the UNet, by XLA's FLOPs
and by the clock, at `benchmarks/cached_latents.py`'s shapes.

    python benchmarks/cached_latents_parts.py                 # 128 px, B=1, 4 slots, f32
    python benchmarks/cached_latents_parts.py --repeats 3 --res 256

Same model folder as `cached_latents.py` (SD1.5's UNet with LoRA rank 8, SD's VAE,
CLIP-L: 12 layers, 77 tokens; random weights). Each part is jitted alone on the same
batch and compiled once with `lower().compile()` (the compile excluded from the times),
its `cost_analysis()` FLOPs and bytes read, then called `--repeats` times, each waiting
on `block_until_ready`, in turn (part 1, part 2, ..., part 1, ...):

- `vae encoder`: `step.encode_layers` (the latent codec's encoder, every layer slot);
- `text encoder`: `step.encode_layer_text` (CLIP-L over every slot's 77 tokens);
- `unet fwd`: the cached loss alone (noise, UNet forward, loss; no gradient);
- `raw step` / `cached step`: the whole train steps (`make_train_step`, jitted by
  `jit_train_step`, state not donated so the same state serves every call).

XLA's CPU cost analysis counts a `while` body once (chunked attention runs in
`lax.map`); at 128-256 px no attention here is chunked.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cached_latents import add_size_args, setup  # noqa: E402


def cost(compiled) -> tuple[float, float]:
    """(GFLOP, MiB accessed) of a compiled program, from XLA's cost analysis."""
    ca = compiled.cost_analysis()
    ca = ca[0] if isinstance(ca, list) else ca
    return float(ca.get("flops", 0.0)) / 1e9, float(ca.get("bytes accessed", 0.0)) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_size_args(parser)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-steps", action="store_true", help="parts only, no steps")
    args = parser.parse_args()

    from dreamlayer_jax.training.latent_cache import cached_batch_keys
    from dreamlayer_jax.training.step import (
        encode_layer_text,
        encode_layers,
        jit_train_step,
        make_loss_fn,
        make_train_step,
    )

    with tempfile.TemporaryDirectory() as tmp:
        b = setup(args, Path(tmp))
        cond, cfg, raw, cached = b.pipe.conditioner, b.cfg, b.raw, b.cached
        valid = int(raw["layer_valid"].sum())
        key = jax.random.key(0)
        losses = {c: make_loss_fn(cfg, b.graph, cond.graphdefs, b.pipe.codec, b.pipe.scheduler,
                                  b.pipe.config.box_margin, cached=c) for c in (False, True)}
        size = (args.res, args.res)
        parts = {
            "vae encoder": (jax.jit(lambda px: encode_layers(b.pipe.codec, px)),
                            (raw["pixels"],)),
            "text encoder": (jax.jit(lambda t, ids: encode_layer_text(
                cond.graphdefs, t, [ids], size)), (b.texts, raw["token_ids"])),
            "unet fwd": (jax.jit(lambda p, batch, k: losses[True](p, [], batch, k)[0]),
                         (b.state.params, cached, key)),
        }
        if not args.skip_steps:
            for name, c in (("raw step", False), ("cached step", True)):
                step = make_train_step(cfg, b.tx, losses[c], b.params)
                t = [] if c else b.texts
                fn = jit_train_step(step, b.mesh, b.state, t, donate=False,
                                    batch_keys=cached_batch_keys(b.cache) if c else None)
                parts[name] = (fn, (b.state, t, cached if c else raw))
        compiled, flops = {}, {}
        for name, (fn, fargs) in parts.items():
            start = time.perf_counter()
            compiled[name] = fn.lower(*fargs).compile()
            flops[name] = cost(compiled[name])
            print(f"compiled {name}: {time.perf_counter() - start:.0f} s", flush=True)
        times: dict[str, list[float]] = {name: [] for name in parts}
        load = os.getloadavg()[0]
        for _ in range(args.repeats + 1):  # the first round warms up, untimed
            for name, (_, fargs) in parts.items():
                start = time.perf_counter()
                jax.block_until_ready(compiled[name](*fargs))
                times[name].append(time.perf_counter() - start)
        load_after = os.getloadavg()[0]
    print(f"SD1.5-shaped, LoRA rank {args.lora_rank}, {args.res} px, batch {args.batch}, "
          f"{args.layers} slots ({valid} valid), f32; load average {load:.1f} -> "
          f"{load_after:.1f} ({os.cpu_count()} CPUs)")
    print("| part | GFLOP | MiB accessed | s (median) | runs s | GFLOP/s |")
    print("|---|---|---|---|---|---|")
    for name in parts:
        runs = times[name][1:]
        med = statistics.median(runs)
        print(f"| {name} | {flops[name][0]:.1f} | {flops[name][1]:.0f} | {med:.2f} | "
              f"{', '.join(f'{t:.2f}' for t in runs)} | {flops[name][0] / med:.1f} |")


if __name__ == "__main__":
    main()
