"""Timing and memory helpers shared by the benchmarks."""

from __future__ import annotations

import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax

SD15_TEXT = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 2,
             "num_attention_heads": 12, "max_position_embeddings": 32,
             "hidden_act": "quick_gelu"}
"""A 2-layer, 768-wide CLIP text encoder: SD1.5's width, cheap to build at random."""


def sd15_unet(sample_size: int) -> dict[str, Any]:
    """SD1.5's UNet architecture (diffusers config keys), for random-weight benchmarks."""
    return {
        "sample_size": sample_size, "in_channels": 4, "out_channels": 4,
        "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
        "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2,
        "attention_head_dim": 8, "norm_num_groups": 32, "cross_attention_dim": 768,
    }


@dataclass(frozen=True)
class Timing:
    """Seconds: the first call (compile + run), then the median and minimum of the repeats."""

    first_s: float
    median_s: float
    min_s: float


def time_fn(fn: Callable[..., Any], *args: Any, repeats: int = 5) -> Timing:
    """Call `fn(*args)` once (compiling it), then `repeats` times; every call waits for
    its outputs with `block_until_ready`."""
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - start
    runs = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        runs.append(time.perf_counter() - start)
    return Timing(first, statistics.median(runs), min(runs))


def compiled_memory_bytes(jitted: Any, *args: Any) -> int | None:
    """XLA's own estimate of a jitted function's footprint: arguments + outputs +
    temporaries (minus aliased buffers), from `lower(...).compile().memory_analysis()`."""
    try:
        stats = jitted.lower(*args).compile().memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend reports it
        return None
    if stats is None:
        return None
    return int(stats.argument_size_in_bytes + stats.output_size_in_bytes
               + stats.temp_size_in_bytes - stats.alias_size_in_bytes)


def peak_memory_bytes() -> tuple[int, str]:
    """`(bytes, source)`: the device's `peak_bytes_in_use` where the backend reports it
    (GPU, TPU), else the process's peak resident set size (monotone over the process)."""
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"]), "device peak_bytes_in_use"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024), "process peak RSS"


def mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:.1f}"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = lambda r: "| " + " | ".join(c.rjust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
                      *map(line, cells)])


def add_sampling_args(parser: Any, scenes: int) -> None:
    """The held-out sampling flags shared by the model benchmarks: `--model`, `--scenes`,
    `--steps`, `--guidance`, `--seed`."""
    parser.add_argument("--model", default=None, help="model folder or builtin[:box|:paper]")
    parser.add_argument("--scenes", type=int, default=scenes)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)


def load_pipeline(model: str | None) -> Any:
    """`DreamLayerPipeline.from_pretrained(model)`, or None after a one-line error on
    stderr (the caller exits with 2)."""
    from dreamlayer_jax.errors import DreamLayerError
    from dreamlayer_jax.pipeline.dreamlayer import DreamLayerPipeline

    try:
        return DreamLayerPipeline.from_pretrained(model)
    except DreamLayerError as exc:
        print(f"error: cannot load {model or 'the built-in model'}: {exc}", file=sys.stderr)
        return None


def truth_latents(pipe: Any, truths: Sequence[Any], num_layers: int) -> Any:
    """`[B, L, h, w, c]`: `pipe`'s codec latents of ground-truth scenes, each padded to
    `num_layers` slots (a layer-stacked batch, as the UNet reads it)."""
    import jax.numpy as jnp
    import numpy as np

    from dreamlayer_jax.data.batch import pad_example
    from dreamlayer_jax.data.scene_example import scene_to_example
    from dreamlayer_jax.training.step import encode_layers

    pixels = np.stack([pad_example(scene_to_example(truth, str(i)), num_layers)["pixels"]
                       for i, truth in enumerate(truths)])  # [B, L, H, W, 4]
    return encode_layers(pipe.codec, jnp.asarray(pixels))
