"""Compile time and steady-state time of the whole DreamLayer sampler, and proof that a
second call with the same shapes and step count does not recompile.

Each measured call is `DreamLayerPipeline.__call__` on one scene of 2 foregrounds (4
layers: background, 2 foregrounds, global) with classifier-free guidance (scale 5) and
IRH on, i.e. text encoding, the jitted `lax.scan` sampler, decoding and the copy to the
host. The first call (tracing + XLA compilation + run) is timed apart from `--repeats`
further calls with the same shapes and step count (median). XLA compilations are counted
with a `jax.monitoring` listener on the '/jax/core/compile/backend_compile_duration'
event (recorded once per XLA compilation, `jax/_src/interpreters/pxla.py`); "compiles
later" should be 0. A second step count (`--other-steps`) is then sampled the same way:
the step count sets the scan's length, so it compiles the sampler once more.

    python benchmarks/sampler.py                          # the built-in model (32x32)
    python benchmarks/sampler.py --steps 10 --repeats 3 --other-steps 15
    python benchmarks/sampler.py --sd15                   # + an SD1.5-sized random model
    python benchmarks/sampler.py --variant paper --steps 4 --other-steps 4

`--variant paper` measures the paper variant's sampler (DESIGN.md section 8: both IRH
passes in the one jit) on a tiny random paper model (16x16 RGBA pixels, pixel codec, no
unshuffling; the built-in model is a box-variant one) and, with `--sd15`, on the SD1.5
model in the paper variant; the scene's foregrounds have no box. Its repeated calls
change IRH's window `(T_H, T_H')` every time (and switch IRH off once), so "compiles
later" = 0 also shows the window is traced.

Models: `builtin` is `DreamLayerPipeline.from_pretrained()` (32x32 RGBA pixels, pixel
codec unshuffled by 2 into 16x16x16 latents). `sd15` is a random model folder written by
`create_model_folder` (to a temporary directory, ~3.5 GB): SD1.5's UNet exactly
([320, 640, 1280, 1280], 2 layers per block, 8 heads, 768-d cross-attention, 4 latent
channels) run on 32x32x4 latents, i.e. the latent size of a 256x256 SD1.5 picture. It
uses the pixel codec without unshuffling (resolution 32: 32x32 RGBA pixels are the
32x32x4 latents), because `create_model_folder` writes no VAE; a latent codec would add
only the VAE decode at the end. Its text encoder is a random 2-layer, 768-d CLIP over a
word vocabulary (not SD's 12-layer CLIP): it runs once per call and costs little.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import jax.monitoring  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SD15_TEXT, format_table, sd15_unet  # noqa: E402

from dreamlayer_jax.data.synthetic_vocab import VOCABULARY  # noqa: E402
from dreamlayer_jax.pipeline.create import create_model_folder  # noqa: E402
from dreamlayer_jax.pipeline.dreamlayer import DreamLayerPipeline  # noqa: E402
from dreamlayer_jax.pipeline.scene import Layer, Scene  # noqa: E402

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
SCENE = Scene(prompt="a small red star and a large green ring in front of a striped blue "
                     "wall at sunset",
              background="a striped blue wall at sunset",
              layers=(Layer("a small red star", box=(0.1, 0.45, 0.5, 0.9)),
                      Layer("a large green ring", box=(0.45, 0.15, 0.95, 0.7))))
PAPER_SCENE = Scene(prompt=SCENE.prompt, background=SCENE.background,
                    layers=tuple(Layer(layer.prompt) for layer in SCENE.layers))
PAPER_FIELDS = {"variant": "paper", "context_width": 16, "context_heads": 2,
                "context_layers": 1}
TINY_UNET = {"sample_size": 16, "in_channels": 4, "out_channels": 4,
             "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
             "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
             "block_out_channels": [16, 32], "layers_per_block": 1, "attention_head_dim": 8,
             "norm_num_groups": 8, "cross_attention_dim": 16}
TINY_TEXT = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
             "num_attention_heads": 2, "max_position_embeddings": 32,
             "hidden_act": "quick_gelu"}
# the paper variant's repeated calls: IRH's window (T_H, T_H') changes every time
PAPER_CALLS = [{"irh_restart": 700.0, "irh_stop": 300.0}, {"irh_restart": 500.0,
               "irh_stop": 500.0}, {"irh": False}, {"irh_restart": 1000.0, "irh_stop": 0.0}]
SD15_UNET = sd15_unet(32)
SCHEDULER = {"_class_name": "DDIMScheduler", "num_train_timesteps": 1000,
             "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
             "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}


class CompileCounter:
    """Records XLA compilations (backend compile events: function name, seconds) since
    the last `take()`."""

    def __init__(self) -> None:
        self.events: list[tuple[str, float]] = []
        jax.monitoring.register_event_duration_secs_listener(self._on_event)

    def _on_event(self, event: str, duration_secs: float, **kwargs: Any) -> None:
        if event == COMPILE_EVENT:
            self.events.append((str(kwargs.get("fun_name", "?")), duration_secs))

    def take(self) -> list[tuple[str, float]]:
        events, self.events = self.events, []
        return events


def describe(events: list[tuple[str, float]]) -> str:
    if not events:
        return "0 compiles"
    names = sorted({name for name, _ in events})
    shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
    return f"{len(events)} compiles, {sum(s for _, s in events):.1f} s in XLA: {shown}"


WORDS = sorted({*VOCABULARY, *SCENE.prompt.split(), *SCENE.background.split()})


def write_sd15_model(folder: Path, variant: str = "box") -> Path:
    extra = {"variant": "paper"} if variant == "paper" else {}
    return create_model_folder(
        folder, unet=SD15_UNET, text_encoder=SD15_TEXT, words=WORDS,
        dreamlayer={"max_layers": 4, "codec": "pixel", "pixel_unshuffle": 1,
                    "resolution": 32, **extra},
        scheduler=SCHEDULER)


def write_tiny_paper_model(folder: Path) -> Path:
    """A tiny random paper-variant model: 16x16 RGBA pixels are its latents."""
    return create_model_folder(
        folder, unet=TINY_UNET, text_encoder=TINY_TEXT, words=WORDS,
        dreamlayer={"max_layers": 4, "codec": "pixel", "resolution": 16, **PAPER_FIELDS},
        scheduler=SCHEDULER)


def measure(pipe: DreamLayerPipeline, name: str, steps: int, repeats: int,
            counter: CompileCounter) -> list[Any]:
    """One table row: first call, then `repeats` calls with the same shapes and steps
    (paper variant: each with another IRH window, `PAPER_CALLS`)."""
    paper = pipe.config.variant == "paper"
    scene = PAPER_SCENE if paper else SCENE

    def call(n: int = -1) -> float:
        kwargs = PAPER_CALLS[n % len(PAPER_CALLS)] if paper and n >= 0 else {"irh": True}
        start = time.perf_counter()
        result = pipe(scene, num_inference_steps=steps, guidance_scale=5.0, seed=0, **kwargs)
        assert result.composite.size  # already on the host: the call has finished
        return time.perf_counter() - start

    counter.take()
    first = call()
    compiles_first = counter.take()
    steady = statistics.median(call(n) for n in range(max(1, repeats)))
    compiles_later = counter.take()
    print(f"{name}, {steps} steps: first call {first:.2f} s ({describe(compiles_first)}); "
          f"steady {steady:.3f} s ({describe(compiles_later)})", flush=True)
    layers = len(SCENE.layers) + 2
    row = [name, steps, layers, f"{first:.2f}", f"{steady:.3f}", f"{steady / steps:.4f}",
           len(compiles_first), len(compiles_later)]
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--other-steps", type=int, default=15,
                        help="a second step count: compiles the sampler once more")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sd15", action="store_true", help="add an SD1.5-sized model")
    parser.add_argument("--variant", choices=("box", "paper"), default="box",
                        help="paper: a tiny random paper-variant model instead of the "
                             "built-in one (and the SD1.5 model in the paper variant)")
    args = parser.parse_args(argv)

    counter = CompileCounter()
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}", flush=True)
    headers = ["model", "steps", "layers", "first call s", "steady s (median)", "s/step",
               "compiles first", "compiles later"]
    rows = []
    step_counts = [args.steps] + ([args.other_steps] if args.other_steps != args.steps else [])
    if args.variant == "paper":
        with tempfile.TemporaryDirectory() as tmp:
            pipe = DreamLayerPipeline.from_pretrained(write_tiny_paper_model(Path(tmp) / "m"))
        name = "paper tiny 16x16"
    else:
        pipe, name = DreamLayerPipeline.from_pretrained(), "builtin 32x32"
    for steps in step_counts:
        rows.append(measure(pipe, name, steps, args.repeats, counter))
    del pipe
    if args.sd15:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            pipe = DreamLayerPipeline.from_pretrained(
                write_sd15_model(Path(tmp) / "sd15", args.variant))
            print(f"sd15: random model written and loaded in "
                  f"{time.perf_counter() - start:.0f} s", flush=True)
        for steps in step_counts:
            label = " (paper)" if args.variant == "paper" else ""
            rows.append(measure(pipe, f"sd15 UNet{label}, 32x32x4 latents", steps,
                                args.repeats, counter))
    print()
    print(format_table(headers, rows))
    print(f"\nsteady = median of {args.repeats} calls after the first; s/step = steady / "
          "steps (includes text encoding and decoding, amortised).")


if __name__ == "__main__":
    main()
