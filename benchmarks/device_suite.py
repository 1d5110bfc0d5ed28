"""The prepared device suite: one command, about 8 minutes on one H200, all tables at once.

    python benchmarks/device_suite.py --out DIR            # on the device (GPU)
    python benchmarks/device_suite.py --smoke --out DIR    # every path, CPU, toy sizes

On the device machine a session runs it through `benchmarks/device_run.sh` (it installs
the carried wheels, bounds the run in time and leaves the tables under `$OUT`), with the
device tool, after `bash /work/shared/device/fetch-wheels.sh` here (diffusers in .whl):

    run(command="bash benchmarks/device_run.sh", carry=[".whl"], timeout_s=560)

Sections, in the order they run, cheap ones first (each writes its table as soon as it
ends; a failing or skipped one says why):

- `attention`: LSSA and CACA (box variant) and the paper variant's all-layer LSSA at the
  UNet's largest block (64x64 tokens, 8 heads of 40, bf16), `attention_backend` cudnn
  against xla (cudnn skipped off NVIDIA GPUs).
- `diffusers`: the SD1.5 UNet forward, this project's (jit, bf16) against diffusers'
  PyTorch UNet (bf16, same weights) on the same device, and their ratio. torch and
  diffusers are imported lazily; the table is skipped with a note when either is missing.
- `train`: SD1.5-shaped DreamLayer UNet train step in bf16 at 512 px (64x64x4 latents,
  pixel codec, random weights), 4 layers: full training, and the paper variant's K/V
  training (`train_params="kv"`, `dreamlayer={"variant": "paper"}`); s/step, examples/s,
  TFLOP/s and MFU (`training.throughput`: XLA's FLOPs of the compiled step over the
  device's bf16 peak).
- `sampler`: the DreamLayer sampler (classifier-free guidance, IRH) at 512 px, 4 layers
  (background, 2 foregrounds, global), box and paper variants: first call, steady s/step.

`--smoke` runs all of it at toy sizes (tiny UNet, 16 px) in seconds on a CPU; the
numbers then mean nothing, it only proves every path runs. `--budget-s` skips the
sections that would start past it (the device run has 8 minutes).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SD15_TEXT, format_table, sd15_unet  # noqa: E402
from sampler import PAPER_SCENE, SCENE, SCHEDULER, TINY_TEXT, WORDS  # noqa: E402

from dreamlayer_jax.pipeline.create import create_model_folder  # noqa: E402

SECTIONS = ("attention", "diffusers", "train", "sampler")  # the cheap ones first
TINY_PAPER = {"context_width": 8, "context_heads": 2, "context_layers": 1}


@dataclass
class Sizes:
    """What one run measures: the full sizes, or `--smoke`'s toy ones."""

    unet: dict[str, Any]
    text: dict[str, Any]
    paper: dict[str, Any]
    latent: int  # latent side (pixel codec, no unshuffle: the scene's pixels)
    picture: int  # the picture side it stands for (SD's VAE: 8 x latent)
    batch: int
    layers: int = 4
    train_steps: int = 5
    sample_steps: int = 10
    repeats: int = 3
    heads: int = 8
    head_dim: int = 40
    tokens: int = 77


MICRO_UNET = {"sample_size": 16, "in_channels": 4, "out_channels": 4,
              "down_block_types": ["CrossAttnDownBlock2D"],
              "up_block_types": ["CrossAttnUpBlock2D"],
              "block_out_channels": [8], "layers_per_block": 1, "attention_head_dim": 4,
              "norm_num_groups": 4, "cross_attention_dim": 8}
MICRO_TEXT = {**TINY_TEXT, "hidden_size": 8, "intermediate_size": 16}
FULL = Sizes(unet=sd15_unet(64), text=SD15_TEXT, paper={}, latent=64, picture=512, batch=2)
SMOKE = Sizes(unet=MICRO_UNET, text=MICRO_TEXT, paper=TINY_PAPER, latent=16, picture=16,
              batch=1, train_steps=1, sample_steps=2, repeats=1, heads=2, head_dim=8,
              tokens=8)


@dataclass
class Table:
    """One section's result: a table, or why there is none."""

    name: str
    title: str
    headers: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    status: str = "ok"  # "ok" | "skipped" | "error"
    seconds: float = 0.0

    def markdown(self) -> str:
        lines = [f"## {self.title}", "", f"status: {self.status} ({self.seconds:.0f} s)", ""]
        if self.rows:
            lines += [format_table(self.headers, self.rows), ""]
        lines += [f"- {n}" for n in self.notes]
        return "\n".join(lines).rstrip() + "\n"


def model_folder(root: Path, sizes: Sizes, variant: str) -> Path:
    """A random model folder (written once per variant) at the run's sizes."""
    folder = root / f"model-{variant}"
    if not (folder / "model_index.json").is_file():
        extra = {"variant": "paper", **sizes.paper} if variant == "paper" else {}
        create_model_folder(folder, unet=sizes.unet, text_encoder=sizes.text, words=WORDS,
                            dreamlayer={"max_layers": sizes.layers, "codec": "pixel",
                                        "pixel_unshuffle": 1, "resolution": sizes.latent,
                                        **extra},
                            scheduler=SCHEDULER)
    return folder


def train_section(table: Table, sizes: Sizes, root: Path) -> None:
    from dreamlayer_jax.parallel.mesh import make_mesh
    from dreamlayer_jax.training.config import TrainConfig
    from dreamlayer_jax.training.loop import Trainer
    from dreamlayer_jax.training.throughput import Throughput, compiled_flops, peak_flops

    peak, source = peak_flops()
    table.headers = ["run", "trains", "px", "B", "L", "compile s", "s/step", "examples/s",
                     "TFLOP/s", "MFU"]
    table.notes.append(f"peak: {'n/a' if peak is None else f'{peak / 1e12:.3g} TFLOP/s'} "
                       f"({source}); FLOPs from XLA's cost analysis of the compiled step")
    runs = [("full", "box", "all"), ("paper K/V", "paper", "kv")]
    for name, variant, trains in runs:
        cfg = TrainConfig(model=str(model_folder(root, sizes, "box")), batch_size=sizes.batch,
                          max_layers=sizes.layers, synthetic_scenes=max(4, sizes.batch),
                          synthetic_resolution=sizes.latent, num_steps=100, progress=False,
                          export=False, train_params=trains, compute_dtype="bfloat16",
                          dreamlayer={"variant": variant, **sizes.paper}
                          if variant == "paper" else {})
        trainer = Trainer(cfg, root / f"run-{variant}-{trains}",
                          mesh=make_mesh(1, 1, 1, devices=jax.devices()[:1]))
        batch = trainer.device_batch(next(trainer.make_iterator()))
        state = trainer.initial_state()
        start = time.perf_counter()
        compiled = trainer.step_fn.lower(state, trainer.text_params, batch).compile()
        state, metrics = compiled(state, trainer.text_params, batch)
        jax.block_until_ready(metrics)
        compile_s = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(sizes.train_steps):
            state, metrics = compiled(state, trainer.text_params, batch)
        jax.block_until_ready((state, metrics))
        seconds = time.perf_counter() - start
        numbers = Throughput(compiled_flops(compiled), sizes.batch, 1, peak).report(
            sizes.train_steps, seconds)
        tflops = numbers.get("tflops_per_device")
        mfu = numbers.get("mfu")
        table.rows.append([name, trains, str(sizes.picture), str(sizes.batch),
                           str(sizes.layers), f"{compile_s:.1f}",
                           f"{numbers['seconds_per_step']:.3f}",
                           f"{numbers['examples_per_second']:.2f}",
                           "n/a" if tflops is None else f"{tflops:.1f}",
                           "n/a" if mfu is None else f"{100 * mfu:.1f}%"])
        del trainer, state, batch, compiled
        gc.collect()
    table.notes.append(f"{sizes.train_steps} timed steps after the compiled first; bf16 "
                       "compute, f32 master weights, AdamW + EMA in the step")


def sampler_section(table: Table, sizes: Sizes, root: Path) -> None:
    from dreamlayer_jax.pipeline.dreamlayer import DreamLayerPipeline

    table.headers = ["variant", "px", "layers", "steps", "first call s", "steady s",
                     "s/step"]
    for variant, scene in (("box", SCENE), ("paper", PAPER_SCENE)):
        pipe = DreamLayerPipeline.from_pretrained(model_folder(root, sizes, variant),
                                                  dtype=jnp.bfloat16)

        def call(pipe=pipe, scene=scene) -> float:
            start = time.perf_counter()
            result = pipe(scene, num_inference_steps=sizes.sample_steps, guidance_scale=5.0,
                          seed=0)
            assert result.composite.size  # on the host: the call has finished
            return time.perf_counter() - start

        first = call()
        steady = statistics.median(call() for _ in range(sizes.repeats))
        table.rows.append([variant, str(sizes.picture), str(len(scene.layers) + 2),
                           str(sizes.sample_steps), f"{first:.2f}", f"{steady:.3f}",
                           f"{steady / sizes.sample_steps:.4f}"])
        del pipe
        gc.collect()
    table.notes.append("guidance 5 (batched), IRH on; steady = median of "
                       f"{sizes.repeats} calls; s/step includes text encoding and decoding")


def time_call(fn: Callable[..., Any], *args: Any, repeats: int) -> float:
    """Median seconds of `fn(*args)` after one warm-up call."""
    jax.block_until_ready(fn(*args))
    runs = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def attention_section(table: Table, sizes: Sizes, root: Path) -> None:
    from dreamlayer_jax.attention import paper
    from dreamlayer_jax.attention.box import caca_attention, lssa_attention
    from dreamlayer_jax.attention.context import LayerContext, make_roles

    b, num_layers, side = sizes.batch, sizes.layers, sizes.latent
    n, h, d = side * side, sizes.heads, sizes.head_dim
    rng = np.random.default_rng(0)

    def arr(*shape: int) -> jax.Array:
        return jnp.asarray(rng.standard_normal(shape, np.float32), jnp.bfloat16)

    q, k, v = (arr(b * num_layers, n, h, d) for _ in range(3))
    kt, vt = (arr(b * num_layers, sizes.tokens, h, d) for _ in range(2))
    valid = jnp.ones((b, num_layers), bool)
    boxes = jnp.tile(jnp.asarray([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0],
                                  [0.1, 0.45, 0.5, 0.9], [0.45, 0.15, 0.95, 0.7]],
                                 jnp.float32)[-num_layers:][None], (b, 1, 1))
    on_gpu = jax.devices()[0].platform in ("gpu", "cuda")
    table.headers = ["op", "tokens", "backend", "ms (median)", "vs xla"]
    ops: dict[str, Callable[[LayerContext], Callable[..., Any]]] = {
        "LSSA (box)": lambda c: jax.jit(lambda q, k, v: lssa_attention(q, k, v, c, side, side)),
        "CACA (box)": lambda c: jax.jit(lambda q, k, v: caca_attention(q, k, v, c, side, side)),
        "LSSA (paper, all layers)": lambda c: jax.jit(lambda q, k, v: paper.all_layer_lssa(
            q, k, v, c.lssa_layer_mask(), backend=c.attention_backend)),
    }
    for op, build in ops.items():
        keys = (kt, vt) if op.startswith("CACA") else (k, v)
        xla_ms = None
        for backend in ("xla", "cudnn"):
            if backend == "cudnn" and not on_gpu:
                table.rows.append([op, str(n), backend, "skipped", "needs an NVIDIA GPU"])
                continue
            ctx = LayerContext(layer_valid=valid, roles=make_roles(valid), boxes=boxes,
                               text=jnp.zeros((b, num_layers, 1, 1)), attention_backend=backend)
            ms = 1e3 * time_call(build(ctx), q, *keys, repeats=max(5, sizes.repeats))
            xla_ms = ms if backend == "xla" else xla_ms
            ratio = f"{ms / xla_ms:.2f}" if xla_ms else "n/a"
            table.rows.append([op, str(n), backend, f"{ms:.2f}", ratio])
    table.notes.append(f"B={b} scenes x L={num_layers} layers, {h} heads of {d}, bf16, "
                       f"{sizes.tokens} text tokens per layer; vs xla < 1: faster than xla")


def diffusers_section(table: Table, sizes: Sizes, root: Path) -> None:
    try:
        import diffusers
        import torch
    except ImportError as err:
        table.status = "skipped"
        table.notes.append(f"diffusers/torch not importable ({err}); carry the wheels "
                           "(/work/shared/device/fetch-wheels.sh) to run this table")
        return
    from flax import nnx

    from dreamlayer_jax.models.unet import UNet2DConditionModel

    config = {**sizes.unet, "sample_size": sizes.latent}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model = diffusers.UNet2DConditionModel(**config).eval()
    model.save_pretrained(root / "diffusers-unet", safe_serialization=True)
    model = model.to(device=device, dtype=torch.bfloat16)
    batch = 2 * sizes.layers  # one scene of L layers with classifier-free guidance
    rng = np.random.default_rng(0)
    sample = rng.standard_normal((batch, 4, sizes.latent, sizes.latent), np.float32)
    timesteps = np.linspace(10.0, 900.0, batch, dtype=np.float32)
    text = rng.standard_normal((batch, sizes.tokens, config["cross_attention_dim"]),
                               np.float32)
    graph, state = nnx.split(UNet2DConditionModel.from_pretrained(root / "diffusers-unet"))
    state = jax.tree.map(lambda x: x.astype(jnp.bfloat16)
                         if jnp.issubdtype(x.dtype, jnp.floating) else x, state)
    fn = jax.jit(lambda st, x, t, c: nnx.merge(graph, st)(x, t, c, None))
    args = (state, jnp.asarray(sample.transpose(0, 2, 3, 1), jnp.bfloat16),
            jnp.asarray(timesteps), jnp.asarray(text, jnp.bfloat16))
    tensors = [torch.from_numpy(sample).to(device, torch.bfloat16),
               torch.from_numpy(timesteps).to(device),
               torch.from_numpy(text).to(device, torch.bfloat16)]

    def torch_call() -> Any:
        with torch.inference_mode():
            out = model(*tensors).sample
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    jax_out = np.asarray(jax.block_until_ready(fn(*args)), np.float32)
    torch_out = torch_call().float().cpu().numpy().transpose(0, 2, 3, 1)
    diff = float(np.abs(jax_out - torch_out).max())
    repeats = max(5, sizes.repeats)
    jax_ms = 1e3 * time_call(fn, *args, repeats=repeats)
    torch_ms = 1e3 * time_call(torch_call, repeats=repeats)
    table.headers = ["model", "batch", "latents", "jax ms", "torch ms", "jax / torch",
                     "max abs diff"]
    table.rows.append(["SD1.5 UNet" if config == {**FULL.unet, "sample_size": sizes.latent}
                       else "tiny UNet", str(batch), f"{sizes.latent}x{sizes.latent}x4",
                       f"{jax_ms:.2f}", f"{torch_ms:.2f}", f"{jax_ms / torch_ms:.2f}",
                       f"{diff:.2e}"])
    processors = sorted({type(p).__name__ for p in model.attn_processors.values()})
    model.to("cpu")
    tensors.clear()
    if device == "cuda":
        torch.cuda.empty_cache()  # leave the GPU to JAX for the sections after this one
    table.notes.append(f"torch {torch.__version__} on {device}, diffusers "
                       f"{diffusers.__version__} ({'/'.join(processors)}), bf16 both; "
                       f"median of {repeats} after a warm-up; jax / torch < 1: jax faster")


RUNNERS = {"train": train_section, "sampler": sampler_section,
           "attention": attention_section, "diffusers": diffusers_section}
TITLES = {"train": "Train step (SD1.5-shaped UNet, bf16)",
          "sampler": "DreamLayer sampler", "attention": "LSSA / CACA: cudnn vs xla",
          "diffusers": "UNet forward: this project vs diffusers (PyTorch)"}


def write(out: Path, tables: list[Table], header: dict[str, Any]) -> None:
    """`device_suite.md` and `device_suite.json` under `out` (rewritten after each section)."""
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# Device suite", ""] + [f"- {k}: {v}" for k, v in header.items()] + [""]
    (out / "device_suite.md").write_text("\n".join(lines) + "\n"
                                         + "\n".join(t.markdown() for t in tables))
    (out / "device_suite.json").write_text(json.dumps(
        {"header": header, "tables": [t.__dict__ for t in tables]}, indent=1))


def main(argv: list[str] | None = None) -> list[Table]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="folder for the tables")
    parser.add_argument("--smoke", action="store_true", help="toy sizes on any device")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections of {SECTIONS}")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="no section starts after this many seconds (default: 450, "
                             "none with --smoke)")
    args = parser.parse_args(argv)
    if args.budget_s is None:
        args.budget_s = float("inf") if args.smoke else 450.0
    sizes = SMOKE if args.smoke else FULL
    names = [s.strip() for s in args.only.split(",") if s.strip()]
    if unknown := sorted(set(names) - set(SECTIONS)):
        parser.error(f"unknown sections {unknown}; choose from {SECTIONS}")
    device = jax.devices()[0]
    header = {"device": f"{device.device_kind} ({device.platform}) x{jax.device_count()}",
              "jax": jax.__version__, "mode": "smoke" if args.smoke else "full",
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    print(f"device suite: {header}", flush=True)
    tables: list[Table] = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            table = Table(name, TITLES[name])
            tables.append(table)
            begun = time.perf_counter()
            if begun - start > args.budget_s:
                table.status = "skipped"
                table.notes.append(f"time budget: {begun - start:.0f} s > {args.budget_s:.0f} s")
            else:
                try:
                    RUNNERS[name](table, sizes, Path(tmp))
                except Exception as err:  # noqa: BLE001 - report, then go on
                    table.status = "error"
                    table.notes.append(f"{type(err).__name__}: {err}".splitlines()[0][:300])
                    traceback.print_exc()
            table.seconds = time.perf_counter() - begun
            print(table.markdown(), flush=True)
            write(args.out, tables, header)
    return tables


if __name__ == "__main__":
    main()
