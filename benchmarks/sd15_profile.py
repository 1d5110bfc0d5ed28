"""Where SD1.5's UNet spends its time on the CPU, in this project (JAX) and in diffusers.

Every distinct sub-module of SD1.5's UNet at batch 2, 32x32x4 latents, 77 text tokens
(ResnetBlock2D, Transformer2DModel, Down/Upsample2D, at each channel count and size) is
built in both frameworks with random weights and timed alone: JAX jitted, PyTorch eager
under `inference_mode` (NCHW, SDPA attention). Times are multiplied by how often the
module occurs in the UNet, which gives the breakdown by module class. The op classes
inside them are timed the same way: the 3x3/1x1 convolutions, GroupNorm + SiLU, the
transformers' linear layers (q, k, v, out, GEGLU, feed-forward), and the attention cores
(`softmax(q k^T) v` of self- and cross-attention, without projections).

    python benchmarks/sd15_profile.py [--repeats 5] [--torch-threads 2] [--only modules|ops]

Columns: ms per call (median), count in the UNet, total ms = ms x count, jax / torch.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import format_table  # noqa: E402

from dreamlayer_jax.models.attention import dot_product_attend  # noqa: E402
from dreamlayer_jax.models.resnet import (  # noqa: E402
    Downsample2D,
    ResnetBlock2D,
    Upsample2D,
    conv2d,
    group_norm,
)
from dreamlayer_jax.models.transformer import Transformer2DModel  # noqa: E402

BATCH, TOKENS, TEMB, CONTEXT, HEADS, GROUPS = 2, 77, 1280, 768, 8, 32

# (in, out, size): SD1.5's 25 resnets at 32x32 latents, down, mid, up.
RESNETS = [(320, 320, 32)] * 2 + [(320, 640, 16), (640, 640, 16), (640, 1280, 8),
                                  (1280, 1280, 8)] + [(1280, 1280, 4)] * 4 \
    + [(2560, 1280, 4)] * 3 + [(2560, 1280, 8)] * 2 + [(1920, 1280, 8), (1920, 640, 16),
                                                       (1280, 640, 16), (960, 640, 16),
                                                       (960, 320, 32)] + [(640, 320, 32)] * 2
TRANSFORMERS = [(320, 32)] * 5 + [(640, 16)] * 5 + [(1280, 8)] * 5 + [(1280, 4)]
DOWNSAMPLES = [(320, 32), (640, 16), (1280, 8)]
UPSAMPLES = [(1280, 4), (1280, 8), (640, 16)]


def timed(call: Callable[[], Any], block: Callable[[Any], Any], repeats: int) -> float:
    """Median ms of `repeats` calls after a warm-up."""
    block(call())
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        block(call())
        runs.append(time.perf_counter() - start)
    return statistics.median(runs) * 1e3


def counted(items: list) -> list[tuple[Any, int]]:
    """`[(item, count)]` in first-seen order."""
    counts: dict[Any, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return list(counts.items())


def module_cases(torch: Any) -> list[tuple[str, str, int, Callable, Callable]]:
    """`(class, shape, count, jax_call, torch_call)` for every distinct sub-module."""
    from diffusers.models import resnet as tres
    from diffusers.models.transformers.transformer_2d import Transformer2DModel as TTransformer

    rngs, key = nnx.Rngs(0), jax.random.key(0)
    temb_j = jax.random.normal(key, (BATCH, TEMB))
    temb_t = torch.randn(BATCH, TEMB)
    text_j = jax.random.normal(key, (BATCH, TOKENS, CONTEXT))
    text_t = torch.randn(BATCH, TOKENS, CONTEXT)
    cases = []

    def add(cls: str, shape: str, count: int, jmod, jin: tuple, tmod, tin: tuple) -> None:
        graph, state = nnx.split(jmod)
        fn = jax.jit(lambda st, *a: nnx.merge(graph, st)(*a))
        tmod.eval()

        def tcall():
            with torch.inference_mode():
                return tmod(*tin)

        cases.append((cls, shape, count, lambda: fn(state, *jin), tcall))

    def x_pair(c: int, s: int):
        return jax.random.normal(key, (BATCH, s, s, c)), torch.randn(BATCH, c, s, s)

    for (cin, cout, s), n in counted(RESNETS):
        xj, xt = x_pair(cin, s)
        add("ResnetBlock2D", f"{cin}->{cout} @{s}", n,
            ResnetBlock2D(cin, cout, TEMB, groups=GROUPS, eps=1e-5, rngs=rngs), (xj, temb_j),
            tres.ResnetBlock2D(in_channels=cin, out_channels=cout, temb_channels=TEMB,
                               groups=GROUPS, eps=1e-5), (xt, temb_t))
    for (c, s), n in counted(TRANSFORMERS):
        xj, xt = x_pair(c, s)
        tmod = TTransformer(num_attention_heads=HEADS, attention_head_dim=c // HEADS,
                            in_channels=c, cross_attention_dim=CONTEXT, norm_num_groups=GROUPS)
        add("Transformer2DModel", f"{c} @{s} ({s * s} tokens)", n,
            Transformer2DModel(c, heads=HEADS, context_dim=CONTEXT, groups=GROUPS, rngs=rngs),
            (xj, text_j), _SampleOnly(tmod), (xt, text_t))
    for (c, s), n in counted(DOWNSAMPLES):
        xj, xt = x_pair(c, s)
        add("Down/Upsample2D", f"down {c} @{s}", n, Downsample2D(c, rngs=rngs), (xj,),
            tres.Downsample2D(c, use_conv=True, padding=1), (xt,))
    for (c, s), n in counted(UPSAMPLES):
        xj, xt = x_pair(c, s)
        add("Down/Upsample2D", f"up {c} @{s}", n, Upsample2D(c, rngs=rngs), (xj,),
            tres.Upsample2D(c, use_conv=True), (xt,))
    return cases


class _SampleOnly:
    """diffusers' Transformer2DModel returning the tensor instead of its output class."""

    def __init__(self, module: Any):
        self.module = module

    def eval(self) -> _SampleOnly:
        self.module.eval()
        return self

    def __call__(self, x: Any, text: Any) -> Any:
        return self.module(x, encoder_hidden_states=text).sample


def op_cases(torch: Any) -> list[tuple[str, str, int, Callable, Callable]]:
    """The op classes inside the modules, at every shape they run at in the UNet."""
    fnn = torch.nn.functional
    rngs, key = nnx.Rngs(0), jax.random.key(0)
    cases = []

    def add(cls, shape, count, jfn, jargs, tfn, targs):
        jitted = jax.jit(jfn)

        def tcall():
            with torch.inference_mode():
                return tfn(*targs)

        cases.append((cls, shape, count, lambda: jitted(*jargs), tcall))

    convs: list[tuple[int, int, int, int, int]] = []  # (in, out, input size, kernel, stride)
    norms: list[tuple[int, int]] = []  # (channels, size), GroupNorm + SiLU
    for cin, cout, s in RESNETS:
        convs += [(cin, cout, s, 3, 1), (cout, cout, s, 3, 1)]
        convs += [(cin, cout, s, 1, 1)] if cin != cout else []
        norms += [(cin, s), (cout, s)]
    convs += [(c, c, s, 3, 2) for c, s in DOWNSAMPLES] + [(c, c, 2 * s, 3, 1) for c, s in UPSAMPLES]
    for c, s in TRANSFORMERS:
        convs += [(c, c, s, 1, 1)] * 2  # proj_in, proj_out
        norms.append((c, s))
    for (cin, cout, s, k, stride), n in counted(convs):
        conv = conv2d(cin, cout, k, stride=stride, rngs=rngs, dtype=jnp.float32)
        tconv = torch.nn.Conv2d(cin, cout, k, stride=stride, padding=(k - 1) // 2)
        add(f"conv {k}x{k}", f"{cin}->{cout} @{s}{'/2' if stride == 2 else ''}", n,
            lambda x, m=conv: m(x),
            (jax.random.normal(key, (BATCH, s, s, cin)),), tconv, (torch.randn(BATCH, cin, s, s),))
    for (c, s), n in counted(norms):
        norm = group_norm(c, GROUPS, 1e-5, rngs=rngs, dtype=jnp.float32)
        tnorm = torch.nn.GroupNorm(GROUPS, c, eps=1e-5)
        add("GroupNorm+SiLU", f"{c} @{s}", n, lambda x, m=norm: jax.nn.silu(m(x)),
            (jax.random.normal(key, (BATCH, s, s, c)),), lambda x, m=tnorm: fnn.silu(m(x)),
            (torch.randn(BATCH, c, s, s),))
    linears: list[tuple[int, int, int]] = []  # (tokens, in, out): the transformer's matmuls
    for c, s in TRANSFORMERS:
        tokens = BATCH * s * s
        linears += [(tokens, c, c)] * 4 + [(BATCH * TOKENS, CONTEXT, c)] * 2  # q k v out, k v
        linears += [(tokens, c, 8 * c), (tokens, 4 * c, c)]  # GEGLU in, feed-forward out
    for (tokens, cin, cout), n in counted(linears):
        dense = nnx.Linear(cin, cout, rngs=rngs)
        tdense = torch.nn.Linear(cin, cout)
        add("linear", f"{tokens}x{cin}->{cout}", n, lambda x, m=dense: m(x),
            (jax.random.normal(key, (tokens, cin)),), tdense, (torch.randn(tokens, cin),))
    for (c, s), n in counted(TRANSFORMERS):
        d = c // HEADS
        for kind, keys in (("self", s * s), ("cross", TOKENS)):
            q = jax.random.normal(key, (BATCH, s * s, HEADS, d))
            kv = jax.random.normal(key, (BATCH, keys, HEADS, d))
            tq, tkv = torch.randn(BATCH, HEADS, s * s, d), torch.randn(BATCH, HEADS, keys, d)
            add(f"attention core ({kind})", f"{s * s}x{keys} keys, d={d}", n,
                dot_product_attend, (q, kv, kv), fnn.scaled_dot_product_attention,
                (tq, tkv, tkv))
    return cases


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--torch-threads", type=int, default=2)
    parser.add_argument("--only", choices=["modules", "ops"], default=None)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.torch_threads)
    torch.manual_seed(0)
    print(f"jax {jax.__version__} ({jax.devices()[0].platform}, XLA_FLAGS="
          f"{os.environ.get('XLA_FLAGS', '')!r}), torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), load {os.getloadavg()[0]:.2f}", flush=True)
    headers = ["class", "shape", "count", "jax ms", "torch ms", "jax total", "torch total",
               "jax / torch"]
    for title, build in (("modules", module_cases), ("ops", op_cases)):
        if args.only not in (None, title):
            continue
        rows, totals = [], {}
        for cls, shape, count, jcall, tcall in build(torch):
            jms = timed(jcall, jax.block_until_ready, args.repeats)
            tms = timed(tcall, lambda r: r, args.repeats)
            rows.append([cls, shape, count, f"{jms:.2f}", f"{tms:.2f}", f"{jms * count:.1f}",
                         f"{tms * count:.1f}", f"{jms / tms:.2f}"])
            print(format_table(headers, rows[-1:]).splitlines()[-1], flush=True)
            jt, tt = totals.get(cls, (0.0, 0.0))
            totals[cls] = (jt + jms * count, tt + tms * count)
        print(f"\n{title}:\n" + format_table(headers, rows))
        summary = [[cls, f"{j:.0f}", f"{t:.0f}", f"{j / t:.2f}"] for cls, (j, t) in totals.items()]
        jax_sum, torch_sum = (sum(col) for col in zip(*totals.values()))
        summary.append(["sum", f"{jax_sum:.0f}", f"{torch_sum:.0f}", f"{jax_sum / torch_sum:.2f}"])
        print("\n" + format_table(["class", "jax ms in UNet", "torch ms in UNet", "jax / torch"],
                                  summary) + f"\n(load {os.getloadavg()[0]:.2f})\n", flush=True)


if __name__ == "__main__":
    main()
