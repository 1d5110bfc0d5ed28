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
from cached_latents import write_model  # noqa: E402


def cost(compiled) -> tuple[float, float]:
    """(GFLOP, MiB accessed) of a compiled program, from XLA's cost analysis."""
    ca = compiled.cost_analysis()
    ca = ca[0] if isinstance(ca, list) else ca
    return float(ca.get("flops", 0.0)) / 1e9, float(ca.get("bytes accessed", 0.0)) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--res", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--skip-steps", action="store_true", help="parts only, no steps")
    args = parser.parse_args()

    from flax import nnx

    from dreamlayer_jax.data.input_pipeline import make_train_iterator
    from dreamlayer_jax.parallel.mesh import make_mesh
    from dreamlayer_jax.pipeline.dreamlayer import DreamLayerPipeline
    from dreamlayer_jax.training.config import TrainConfig
    from dreamlayer_jax.training.latent_cache import (
        cache_latents,
        cached_arrays,
        cached_batch_keys,
        open_cache,
    )
    from dreamlayer_jax.training.loop import synthetic_source
    from dreamlayer_jax.training.optimizer import make_optimizer, trained_mask
    from dreamlayer_jax.training.state import init_train_state
    from dreamlayer_jax.training.step import (
        encode_layer_text,
        encode_layers,
        host_arrays,
        jit_train_step,
        make_loss_fn,
        make_train_step,
        place_batch,
    )

    mesh = make_mesh(1, 1, 1, devices=jax.devices()[:1])
    with tempfile.TemporaryDirectory() as tmp:
        model = write_model(Path(tmp) / "model", args.res, args.layers, args.lora_rank)
        fields = dict(model=str(model), batch_size=args.batch, max_layers=args.layers,
                      synthetic_scenes=max(4, args.batch), synthetic_resolution=args.res,
                      train_params="dreamlayer", progress=False, export=False)
        cfg = TrainConfig(**fields)
        cache_latents(cfg, Path(tmp) / "cache")
        pipe = DreamLayerPipeline.from_pretrained(model)
        cache = open_cache(TrainConfig(**fields, data_cache=str(Path(tmp) / "cache")), pipe,
                           args.layers)
        cond = pipe.conditioner
        graph, params = nnx.split(pipe.unet)
        params = nnx.to_pure_dict(params)
        tx = make_optimizer(cfg, params)
        state = init_train_state(params, tx, 0, trained_mask(params, cfg.train_params))
        texts = [nnx.to_pure_dict(p) for p in cond.params]
        raw = place_batch(host_arrays(cond, next(make_train_iterator(
            synthetic_source(cfg, args.layers), batch_size=args.batch,
            max_layers=args.layers, seed=0))), mesh)
        cached = place_batch(cached_arrays(next(make_train_iterator(
            cache, batch_size=args.batch, max_layers=args.layers, seed=0)),
            cached_batch_keys(cache)), mesh)
        valid = int(raw["layer_valid"].sum())
        key = jax.random.key(0)
        losses = {c: make_loss_fn(cfg, graph, cond.graphdefs, pipe.codec, pipe.scheduler,
                                  pipe.config.box_margin, cached=c) for c in (False, True)}
        size = (args.res, args.res)
        parts = {
            "vae encoder": (jax.jit(lambda px: encode_layers(pipe.codec, px)),
                            (raw["pixels"],)),
            "text encoder": (jax.jit(lambda t, ids: encode_layer_text(
                cond.graphdefs, t, [ids], size)), (texts, raw["token_ids"])),
            "unet fwd": (jax.jit(lambda p, b, k: losses[True](p, [], b, k)[0]),
                         (state.params, cached, key)),
        }
        if not args.skip_steps:
            for name, c in (("raw step", False), ("cached step", True)):
                step = make_train_step(cfg, tx, losses[c], params)
                t = [] if c else texts
                fn = jit_train_step(step, mesh, state, t, donate=False,
                                    batch_keys=cached_batch_keys(cache) if c else None)
                parts[name] = (fn, (state, t, cached if c else raw))
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
