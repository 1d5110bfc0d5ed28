"""Train step from raw scenes against the same step from a latent cache, SD1.5-shaped.

    python benchmarks/cached_latents.py                  # 128 px, batch 1, 4 layer slots
    python benchmarks/cached_latents.py --res 256 --rounds 5

A random-weight model folder with SD1.5's UNet, VAE and CLIP-L text encoder (12 layers,
77 tokens) is written to a temporary folder; its scenes are cached once
(`training.latent_cache.cache_latents`). Both steps run on one shared train state in
one process, compiled first, then timed alternately (raw, cached, encoders alone, raw,
...), so that a shared CPU's load falls on all alike; the load average is printed
before and after.
Training is LoRA (`train_params="dreamlayer"`): a full fine-tune of SD1.5 does not fit
this machine's memory with both steps held. Prints the median seconds per step of each
and their ratio (raw / cached).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import sd15_unet  # noqa: E402

CLIP_L = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
          "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu"}
SD15_VAE = {"in_channels": 3, "out_channels": 3, "latent_channels": 4,
            "down_block_types": ["DownEncoderBlock2D"] * 4,
            "up_block_types": ["UpDecoderBlock2D"] * 4,
            "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2,
            "norm_num_groups": 32, "scaling_factor": 0.18215}


def write_model(folder: Path, res: int, layers: int, lora_rank: int) -> Path:
    """SD1.5-shaped DreamLayer folder with random weights and a latent (VAE) codec."""
    from flax import nnx
    from tiny_model import TINY_SCHEDULER, WORDS

    from dreamlayer_jax.models.vae import AutoencoderKL, VAEConfig
    from dreamlayer_jax.pipeline.create import create_model_folder

    create_model_folder(folder, unet=sd15_unet(res // 8), text_encoder=CLIP_L, words=WORDS,
                        dreamlayer={"max_layers": layers, "codec": "pixel", "resolution": res,
                                    "lora_rank": lora_rank}, scheduler=TINY_SCHEDULER)
    vae = AutoencoderKL(VAEConfig.from_dict({**SD15_VAE, "sample_size": res}),
                        rngs=nnx.Rngs(0))
    vae.save_pretrained(folder / "vae")
    config_path = folder / "dreamlayer" / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "codec": "latent"}))
    return folder


@dataclass
class Bench:
    """Everything both arms share: the model, one train state, one batch of each kind."""

    cfg: Any  # TrainConfig of the raw step (the cached one adds `data_cache`)
    pipe: Any
    graph: Any  # the UNet's graphdef
    params: Any
    tx: Any
    state: Any
    texts: list[Any]  # the text encoders' parameters
    cache: Any  # the opened latent cache
    raw: dict[str, Any]  # a placed raw batch
    cached: dict[str, Any]  # the same scene from the cache, placed
    mesh: Any
    cache_seconds: float


def add_size_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--res", type=int, default=128, help="scene side in pixels")
    parser.add_argument("--layers", type=int, default=4, help="layer slots per scene")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--lora-rank", type=int, default=8)


def setup(args: argparse.Namespace, tmp: Path) -> Bench:
    """Write the model under `tmp`, cache its scenes, build the state and both batches."""
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
    from dreamlayer_jax.training.optimizer import make_optimizer, trained_mask
    from dreamlayer_jax.training.sources import synthetic_source
    from dreamlayer_jax.training.state import init_train_state
    from dreamlayer_jax.training.step import host_arrays, place_batch

    mesh = make_mesh(1, 1, 1, devices=jax.devices()[:1])
    model = write_model(tmp / "model", args.res, args.layers, args.lora_rank)
    fields = dict(model=str(model), batch_size=args.batch, max_layers=args.layers,
                  synthetic_scenes=max(4, args.batch), synthetic_resolution=args.res,
                  train_params="dreamlayer", progress=False, export=False)
    cfg = TrainConfig(**fields)
    start = time.perf_counter()
    cache_latents(cfg, tmp / "cache")
    cache_seconds = time.perf_counter() - start
    pipe = DreamLayerPipeline.from_pretrained(model)
    cache = open_cache(TrainConfig(**fields, data_cache=str(tmp / "cache")), pipe, args.layers)
    cond = pipe.conditioner
    graph, params = nnx.split(pipe.unet)
    params = nnx.to_pure_dict(params)
    tx = make_optimizer(cfg, params)
    state = init_train_state(params, tx, 0, trained_mask(params, cfg.train_params))
    raw = place_batch(host_arrays(cond, next(make_train_iterator(
        synthetic_source(cfg, args.layers), batch_size=args.batch, max_layers=args.layers,
        seed=0))), mesh)
    cached = place_batch(cached_arrays(next(make_train_iterator(
        cache, batch_size=args.batch, max_layers=args.layers, seed=0)),
        cached_batch_keys(cache)), mesh)
    return Bench(cfg, pipe, graph, params, tx, state,
                 [nnx.to_pure_dict(p) for p in cond.params], cache, raw, cached, mesh,
                 cache_seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_size_args(parser)
    parser.add_argument("--rounds", type=int, default=3, help="timed steps of each arm")
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
        cond, state = b.pipe.conditioner, b.state
        steps = {}
        for name, cached in (("raw", False), ("cached", True)):
            loss_fn = make_loss_fn(b.cfg, b.graph, cond.graphdefs, b.pipe.codec,
                                   b.pipe.scheduler, b.pipe.config.box_margin, cached=cached)
            step = make_train_step(b.cfg, b.tx, loss_fn, b.params)
            keys = cached_batch_keys(b.cache) if cached else None
            texts = [] if cached else b.texts
            steps[name] = (jit_train_step(step, b.mesh, state, texts, True, keys), texts)
        batches = {"raw": b.raw, "cached": b.cached}

        @jax.jit
        def encoders(texts, batch):  # what the cached step no longer runs
            ids = [batch["token_ids"]]
            return (encode_layers(b.pipe.codec, batch["pixels"]),
                    encode_layer_text(cond.graphdefs, texts, ids, (args.res, args.res)))

        times: dict[str, list[float]] = {"raw": [], "cached": [], "encoders": []}
        load_before = os.getloadavg()
        for round_ in range(args.rounds + 2):  # rounds 0 and 1 compile (state layouts)
            for name in ("raw", "cached", "encoders"):
                t0 = time.perf_counter()
                if name == "encoders":
                    jax.block_until_ready(encoders(b.texts, b.raw))
                else:
                    fn, texts = steps[name]
                    state, metrics = fn(state, texts, batches[name])
                    jax.block_until_ready(metrics)
                if round_ > 1:
                    times[name].append(time.perf_counter() - t0)
        load_after = os.getloadavg()
    raw_s, cached_s, enc_s = (statistics.median(times[k]) for k in ("raw", "cached", "encoders"))
    print(f"SD1.5-shaped (UNet, VAE, CLIP-L 77 tokens), LoRA rank {args.lora_rank}, "
          f"{args.res} px, batch {args.batch}, {args.layers} slots, f32, "
          f"{jax.devices()[0].platform}; caching {b.cache_seconds:.1f} s for "
          f"{b.cfg.synthetic_scenes} scenes")
    print(f"raw step {raw_s:.2f} s (runs {[round(t, 2) for t in times['raw']]}), cached "
          f"step {cached_s:.2f} s (runs {[round(t, 2) for t in times['cached']]})")
    print(f"the encoders alone (VAE encoder + text encoder, forward): {enc_s:.2f} s "
          f"(runs {[round(t, 2) for t in times['encoders']]})")
    print(f"load average before {load_before[0]:.1f}, after {load_after[0]:.1f} "
          f"({os.cpu_count()} CPUs)")
    print(f"ratio raw / cached: {raw_s / cached_s:.2f}x")


if __name__ == "__main__":
    main()
