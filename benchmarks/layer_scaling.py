"""How the cost of one DreamLayer denoising step grows with the number of layers L.

For L = 2 .. max_layers (background, L - 2 foregrounds, global) this times one jitted
DreamLayerUNet call with classifier-free guidance batched in (`layer_sampler.guided`, the
exact function the sampler scans over) on a small random model, with LSSA/CACA on and
off, against the base UNet denoising a single image with guidance ("1 layer").

    python benchmarks/layer_scaling.py [--resolution 32] [--max-layers 9] [--repeats 5]

Columns: ms/step (median of the repeats), ratio = time(L) / (L * time(1 layer)) (target
<= 1.15), XLA's compiled footprint of the step (arguments + outputs + temporaries; it
should grow linearly in L) and, at the end, the process's peak memory.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from functools import partial
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import compiled_memory_bytes, format_table, mib, peak_memory_bytes, time_fn  # noqa: E402

from dreamlayer_jax.attention.context import LayerContext, make_roles  # noqa: E402
from dreamlayer_jax.pipeline.create import create_model_folder  # noqa: E402
from dreamlayer_jax.pipeline.dreamlayer import DreamLayerPipeline  # noqa: E402
from dreamlayer_jax.pipeline.layer_sampler import guided  # noqa: E402

WORDS = ["a", "red", "cat", "blue", "dog", "green", "tree", "sofa", "room", "on", "in"]


def model_config(resolution: int, max_layers: int) -> dict:
    """A random model somewhat larger than the tests' tiny one."""
    return {
        "unet": {"sample_size": resolution, "in_channels": 4, "out_channels": 4,
                 "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
                 "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
                 "block_out_channels": [32, 64], "layers_per_block": 1,
                 "attention_head_dim": 8, "norm_num_groups": 16, "cross_attention_dim": 32},
        "text_encoder": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                         "num_attention_heads": 2, "max_position_embeddings": 16},
        "words": WORDS,
        "dreamlayer": {"max_layers": max_layers, "codec": "pixel", "resolution": resolution},
        "scheduler": {"_class_name": "DDIMScheduler", "num_train_timesteps": 1000,
                      "beta_schedule": "scaled_linear", "beta_start": 0.00085,
                      "beta_end": 0.012, "clip_sample": False, "set_alpha_to_one": False},
    }


def layer_context(pipe: DreamLayerPipeline, num_layers: int, switches: bool
                  ) -> tuple[LayerContext, LayerContext]:
    """One scene of `num_layers` layers (background, `num_layers - 2` foregrounds in
    overlapping boxes, global), all slots valid, and its unconditional context."""
    k = num_layers - 2
    boxes = [(0.0, 0.0, 1.0, 1.0)] + [(i / (k + 1), 0.2, (i + 2) / (k + 1), 0.8)
                                      for i in range(k)] + [(0.0, 0.0, 1.0, 1.0)]
    prompts = ["a room", *(f"a {WORDS[1 + i % 6]} cat" for i in range(k)), "a cat in a room"]
    text = pipe.encode_prompts(prompts)[None]
    valid = jnp.ones((1, num_layers), bool)
    ctx = LayerContext(layer_valid=valid, roles=make_roles(valid), boxes=jnp.asarray([boxes]),
                       text=text, caca=switches, lssa=switches,
                       box_margin=pipe.config.box_margin)
    return ctx, ctx.replace(text=jnp.broadcast_to(pipe.encode_prompts([""])[None], text.shape))


@partial(jax.jit, static_argnames=("graphdef",))
def layer_step(graphdef, params, ctx, uncond, x, t, guidance):
    """One guided DreamLayerUNet call on `x[1, L, h, w, c]`."""
    return guided(nnx.merge(graphdef, params), ctx, uncond, guidance)(x, t, jnp.int32(0))


@partial(jax.jit, static_argnames=("graphdef",))
def single_step(graphdef, params, text, x, t, guidance):
    """The base UNet on one image `x[1, h, w, c]`, guidance batched; `text[2, T, D]`."""
    out = nnx.merge(graphdef, params)(jnp.concatenate([x, x]), t, text)
    uncond, cond = jnp.split(out, 2)
    return uncond + guidance * (cond - uncond)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--max-layers", type=int, default=9)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        folder = create_model_folder(Path(tmp) / "model",
                                     **model_config(args.resolution, args.max_layers))
        pipe = DreamLayerPipeline.from_pretrained(folder)
    h, w, c = pipe.latent_shape()
    t, guidance = jnp.int32(500), jnp.float32(5.0)
    key = jax.random.key(0)
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, "
          f"latents {h}x{w}x{c}, repeats {args.repeats}", flush=True)

    base_graph, base_params = nnx.split(pipe.unet.unet)
    text = jnp.concatenate([pipe.encode_prompts([""]), pipe.encode_prompts(["a cat"])])
    x1 = jax.random.normal(key, (1, h, w, c))
    one = time_fn(partial(single_step, base_graph), base_params, text, x1, t, guidance,
                  repeats=args.repeats)
    one_mem = compiled_memory_bytes(single_step, base_graph, base_params, text, x1, t, guidance)
    print(f"1 layer (base UNet, CFG): {one.median_s * 1e3:.1f} ms/step, "
          f"compiled footprint {mib(one_mem)} MiB", flush=True)

    graph, params = pipe._unet_graph, pipe._unet_params
    headers = ["L", "LSSA+CACA", "ms/step", "ratio t(L)/(L t1)", "compiled MiB", "compile s"]
    rows = []
    for switches in (True, False):
        for num_layers in range(2, args.max_layers + 1):
            ctx, uncond = layer_context(pipe, num_layers, switches)
            x = jax.random.normal(key, (1, num_layers, h, w, c))
            step_args = (params, ctx, uncond, x, t, guidance)
            timing = time_fn(partial(layer_step, graph), *step_args, repeats=args.repeats)
            memory = compiled_memory_bytes(layer_step, graph, *step_args)
            ratio = timing.median_s / (num_layers * one.median_s)
            rows.append([num_layers, "on" if switches else "off",
                         f"{timing.median_s * 1e3:.1f}", f"{ratio:.2f}", mib(memory),
                         f"{timing.first_s - timing.median_s:.1f}"])
            print(format_table(headers, rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(format_table(headers, rows))
    peak, source = peak_memory_bytes()
    print(f"\n1 layer: {one.median_s * 1e3:.1f} ms/step; peak memory ({source}): {mib(peak)} MiB")


if __name__ == "__main__":
    main()
