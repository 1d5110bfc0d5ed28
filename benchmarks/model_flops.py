"""FLOPs and bytes per call from XLA's cost analysis, against the FLOP/s and bandwidth
this machine measurably reaches in the same run.

Two calls are analysed and timed (median of `--repeats`, after a compile):

- one guided sampling step: the DreamLayerUNet with classifier-free guidance batched in
  (`layer_sampler.guided`, the function the sampler scans over), on `--batch` scenes of
  `--layers` layers (so 2 * batch * layers UNet images per call);
- one training step: `Trainer.step_fn` (text encoder, UNet forward and backward, AdamW,
  EMA) on a batch of `--batch` synthetic scenes of up to `--layers` layers.

FLOPs and bytes come from `jax.jit(f).lower(*args).compile().cost_analysis()` ('flops',
'bytes accessed': the compiled program's per-op operand and result bytes, an upper bound
of memory traffic since caches are ignored). The peaks are measured in the same process:
FLOP/s from a jitted float32 `jnp.dot` of two `--peak-size` square matrices (2 n^3 FLOPs
per call), bandwidth from a jitted `x * 1.0001` over a `--bandwidth-mib` float32 array
(read + write: 2 * size bytes per call). The floors are flops / peak FLOP/s and bytes /
peak bandwidth; a call cannot beat max(FLOP floor, byte floor), and the larger one names
what limits it ("bound" column).

    python benchmarks/model_flops.py                      # configs/builtin.py's architecture
    python benchmarks/model_flops.py --repeats 10 --peak-size 1024
    python benchmarks/model_flops.py --sd15 --batch 1 --layers 3 --train-params dreamlayer \
        --lora-rank 32                                    # SD1.5's UNet, 32x32x4 latents

Models are random folders written by `create_model_folder` to a temporary directory:
default, `ARCHITECTURE` of configs/builtin.py (32x32 RGBA pixels unshuffled by 2 into
16x16x16 latents); `--sd15`, SD1.5's UNet exactly (pixel codec without unshuffling at
32x32, i.e. 32x32x4 latents, the latent size of a 256x256 picture) with a 2-layer 768-d
text encoder.

Which floor limits each row: on the loaded 2-core CPU this was written on (52 GFLOP/s
matmul, 2.2 GB/s copy: a balance of ~23 FLOP/byte), the default model's guided step
(5.8 FLOP/byte) and training step (4.4) are both on the byte side: with 48 and 96
channels each convolution does little arithmetic per byte it moves.
Their byte floor is close to or even above the measured time ("floor / measured" ~1):
'bytes accessed' counts traffic that stays in cache, while the copy that sets the
bandwidth peak goes to DRAM, so the byte floor is an overestimate for small tensors. The
matmul row is on the FLOP side by construction; SD1.5's wide convolutions should put its
rows there too (not run here: the "bound" column reports what each run measured).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SD15_TEXT, format_table, sd15_unet, time_fn  # noqa: E402

from dreamlayer_jax.data.synthetic_vocab import VOCABULARY  # noqa: E402
from dreamlayer_jax.parallel.mesh import make_mesh  # noqa: E402
from dreamlayer_jax.pipeline.create import create_model_folder  # noqa: E402
from dreamlayer_jax.pipeline.dreamlayer import DreamLayerPipeline  # noqa: E402
from dreamlayer_jax.pipeline.layer_sampler import guided  # noqa: E402
from dreamlayer_jax.pipeline.scene import Layer, Scene  # noqa: E402
from dreamlayer_jax.training.config import TrainConfig  # noqa: E402
from dreamlayer_jax.training.loop import Trainer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SD15_UNET = sd15_unet(32)
FOREGROUNDS = ["a small red star", "a large green ring", "a small blue square",
               "a large yellow circle", "a small purple triangle", "a large orange star"]


def builtin_architecture() -> dict[str, Any]:
    spec = importlib.util.spec_from_file_location("_builtin_config",
                                                  ROOT / "configs" / "builtin.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ARCHITECTURE


def write_model(folder: Path, sd15: bool, layers: int) -> Path:
    arch = builtin_architecture()
    words = sorted({*VOCABULARY, "a", "and", "in", "front", "of", "at", "on", "with",
                    *" ".join(FOREGROUNDS).split()})
    dreamlayer = {**arch["dreamlayer"], "max_layers": max(layers, arch["dreamlayer"]
                                                          ["max_layers"])}
    unet, text = arch["unet"], arch["text_encoder"]
    if sd15:
        unet, text = SD15_UNET, SD15_TEXT
        dreamlayer = {**dreamlayer, "pixel_unshuffle": 1, "resolution": 32}
    return create_model_folder(folder, unet=unet, text_encoder=text, words=words,
                               dreamlayer=dreamlayer, scheduler=arch["scheduler"])


def cost(compiled: Any) -> tuple[float, float]:
    """('flops', 'bytes accessed') of a compiled program (a dict, or a list of them)."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list | tuple):
        analysis = analysis[0] if analysis else {}
    return float(analysis.get("flops", 0.0)), float(analysis.get("bytes accessed", 0.0))


def measure(jitted: Any, args: tuple[Any, ...], repeats: int) -> tuple[float, float, float]:
    """(flops, bytes accessed, median seconds) of one call of `jitted(*args)`."""
    compiled = jitted.lower(*args).compile()
    flops, nbytes = cost(compiled)
    return flops, nbytes, time_fn(compiled, *args, repeats=repeats).median_s


def guided_step_args(pipe: DreamLayerPipeline, batch: int, layers: int) -> tuple[Any, ...]:
    k = layers - 2
    fgs = [Layer(FOREGROUNDS[i % len(FOREGROUNDS)], box=(i / (k + 1), 0.2, (i + 2) / (k + 1),
                                                           0.8)) for i in range(k)]
    scene = Scene(prompt=" and ".join(l.prompt for l in fgs) + " in front of a blue wall",
                  background="a blue wall", layers=tuple(fgs))
    ctx, uncond = pipe.layer_context([scene] * batch)
    x = jax.random.normal(jax.random.key(0), (batch, layers, *pipe.latent_shape()))
    return (pipe._unet_params, ctx, uncond, x, jnp.int32(500), jnp.float32(5.0))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sd15", action="store_true", help="SD1.5's UNet (32x32x4 latents)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--layers", type=int, default=4, help="layers per scene (>= 3)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--peak-size", type=int, default=2048, help="matmul side for peak")
    parser.add_argument("--bandwidth-mib", type=int, default=256, help="copy size for peak")
    parser.add_argument("--train-params", choices=("all", "dreamlayer"), default="all",
                        help="dreamlayer: LoRA + role embedding on a frozen base")
    parser.add_argument("--lora-rank", type=int, default=0)
    args = parser.parse_args(argv)

    n = args.peak_size
    a = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    dot_flops_xla, _, dot_s = measure(jax.jit(jnp.dot), (a, a), args.repeats)
    peak_flops = 2 * n**3 / dot_s
    big = jnp.ones((args.bandwidth_mib * 2**20 // 4,), jnp.float32)
    copy_s = time_fn(jax.jit(lambda x: x * 1.0001), big, repeats=args.repeats).median_s
    peak_bw = 2 * big.nbytes / copy_s
    del big
    print(f"device: {jax.devices()[0].device_kind}; matmul peak {peak_flops / 1e9:.1f} GFLOP/s "
          f"(XLA counts {dot_flops_xla / 2 / n**3:.2f} x 2n^3), bandwidth "
          f"{peak_bw / 1e9:.1f} GB/s, balance {peak_flops / peak_bw:.1f} FLOP/byte", flush=True)

    name = "sd15" if args.sd15 else "builtin-arch"
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_model(Path(tmp) / "model", args.sd15, args.layers)
        pipe = DreamLayerPipeline.from_pretrained(folder)
        graph = pipe._unet_graph

        @jax.jit
        def guided_step(params: nnx.State, ctx: Any, uncond: jax.Array, x: jax.Array,
                        t: jax.Array, guidance: jax.Array) -> jax.Array:
            unet = nnx.merge(graph, params)
            return guided(unet, ctx, uncond, guidance)(x, t, jnp.int32(0))

        step = measure(guided_step, guided_step_args(pipe, args.batch, args.layers),
                       args.repeats)
        print(f"guided step: {step[0] / 1e9:.2f} GFLOP, {step[2] * 1e3:.1f} ms", flush=True)

        res = pipe.config.resolution
        cfg = TrainConfig(model=str(folder), batch_size=args.batch, max_layers=args.layers,
                          synthetic_scenes=max(8, args.batch), synthetic_resolution=res,
                          num_steps=2, progress=False, export=False,
                          train_params=args.train_params,
                          dreamlayer={"lora_rank": args.lora_rank})
        trainer = Trainer(cfg, Path(tmp) / "run",
                          mesh=make_mesh(1, 1, 1, devices=jax.devices()[:1]))
        batch = trainer.device_batch(next(trainer.make_iterator()))
        step_fn = trainer.jit_step(trainer.mesh, donate=False)  # same args every call
        train = measure(step_fn, (trainer.initial_state(), trainer.text_params, batch),
                        args.repeats)
        print(f"train step: {train[0] / 1e9:.2f} GFLOP, {train[2] * 1e3:.1f} ms", flush=True)

    b, l = args.batch, args.layers
    calls = [(f"jnp.dot {n}x{n} f32 (peak)", 2.0 * n**3, n * n * 4 * 3.0, dot_s),
             (f"{name} guided step B={b} L={l}", *step),
             (f"{name} train step ({args.train_params}) B={b} L={l}", *train)]
    rows, floors = [], []
    for what, flops, nbytes, seconds in calls:
        achieved = flops / seconds
        rows.append([what, f"{flops / 1e9:.2f}", f"{seconds * 1e3:.1f}",
                     f"{achieved / 1e9:.1f}", f"{achieved / peak_flops:.2f}"])
        flop_floor, byte_floor = flops / peak_flops, nbytes / peak_bw
        floors.append([what, f"{nbytes / 2**20:.1f}", f"{flops / max(nbytes, 1):.1f}",
                       f"{flop_floor * 1e3:.1f}", f"{byte_floor * 1e3:.1f}",
                       "FLOPs" if flop_floor >= byte_floor else "bytes",
                       f"{max(flop_floor, byte_floor) / seconds:.2f}"])
    print()
    print(format_table(["what", "GFLOP per call", "ms per call", "achieved GFLOP/s",
                        "fraction of measured peak"], rows))
    print()
    print(format_table(["what", "MiB accessed", "FLOP/byte", "FLOP floor ms", "byte floor ms",
                        "bound", "floor / measured"], floors))
    print(f"\npeaks measured in this run: {peak_flops / 1e9:.1f} GFLOP/s ({n}^2 f32 matmul), "
          f"{peak_bw / 1e9:.1f} GB/s ({args.bandwidth_mib} MiB copy); the matmul's bytes are "
          "its 3 matrices. Medians of "
          f"{args.repeats} calls after a compile.")


if __name__ == "__main__":
    main()
