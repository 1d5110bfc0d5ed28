"""What the paper variant's context maps cost per denoising step.

The maps come out of the softmax the context blocks' cross-attention computes anyway
(`attention.paper.cross_attention_with_maps`): no second attention pass. On the XLA
backend the probabilities `[rows, heads, N, T]` exist in any case; on the fused
backends (cuDNN, splash) they are materialised for the context blocks only. This script
times, at SD1.5's context block (512 px: 16x16, 1280 channels, 8 heads of 160, 77 text
tokens, two transformers), one plain cross-attention against the one that also returns
the maps, and the context-aware layers; and prints the bytes the probabilities take.

    python benchmarks/context_maps.py [--layers 5] [--width 128] [--depth 2]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
from common import time_fn
from flax import nnx

from dreamlayer_jax.attention.paper import cross_attention_with_maps
from dreamlayer_jax.attention.softmax import xla_attention
from dreamlayer_jax.models.context_layers import ContextAwareLayers

SD15_CONTEXT = {"h": 16, "w": 16, "channels": 1280, "heads": 8, "tokens": 77, "blocks": 2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=5, help="L: background, 3 fg, global")
    parser.add_argument("--width", type=int, default=128, help="context-aware layers' width")
    parser.add_argument("--depth", type=int, default=2, help="context-aware layers (N)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    c = SD15_CONTEXT
    rows = 2 * args.layers  # one scene with classifier-free guidance
    n, d = c["h"] * c["w"], c["channels"] // c["heads"]
    key = jax.random.key(0)
    q = jax.random.normal(key, (rows, n, c["heads"], d))
    k = jax.random.normal(jax.random.fold_in(key, 1), (rows, c["tokens"], c["heads"], d))
    v = jax.random.normal(jax.random.fold_in(key, 2), k.shape)
    owner = jnp.where(jnp.arange(c["tokens"]) < 20, jnp.arange(c["tokens"]) % args.layers, -1)
    owner = jnp.broadcast_to(owner, (2, c["tokens"]))
    own = jnp.broadcast_to(jnp.arange(c["tokens"]) < 8, (2, args.layers, c["tokens"]))

    plain = jax.jit(xla_attention)
    with_maps = jax.jit(lambda q, k, v: cross_attention_with_maps(
        q, k, v, num_layers=args.layers, token_owner=owner, own_tokens=own, h=c["h"],
        w=c["w"]))
    t_plain = time_fn(plain, q, k, v, repeats=args.repeats).min_s
    t_maps = time_fn(with_maps, q, k, v, repeats=args.repeats).min_s

    layers = ContextAwareLayers(c["channels"], width=args.width, depth=args.depth,
                                heads=4, rngs=nnx.Rngs(0))
    graph, params = nnx.split(layers)
    refine = jax.jit(lambda p, m, h: nnx.merge(graph, p)(m, h))
    maps = jax.random.uniform(key, (2, args.layers - 2, c["h"], c["w"]))
    hidden = jax.random.normal(key, (2, c["h"], c["w"], c["channels"]))
    t_refine = time_fn(refine, params, maps, hidden, repeats=args.repeats).min_s

    probs_mib = rows * c["heads"] * n * c["tokens"] * 4 / 2**20
    print(f"SD1.5 context block, L={args.layers}, guidance (rows={rows}), "
          f"{jax.devices()[0].device_kind}")
    print("| part | ms (min of repeats) |")
    print("|---|---|")
    print(f"| cross-attention, plain | {t_plain * 1e3:.2f} |")
    print(f"| cross-attention + maps | {t_maps * 1e3:.2f} |")
    print(f"| context-aware layers (N={args.depth}, width {args.width}) | "
          f"{t_refine * 1e3:.2f} |")
    extra = c["blocks"] * (t_maps - t_plain) + t_refine
    print(f"per UNet call: {c['blocks']} context blocks + refinement = "
          f"{extra * 1e3:.2f} ms more than plain cross-attention")
    print(f"probabilities per context block: {probs_mib:.1f} MiB f32 "
          f"({c['blocks'] * probs_mib:.1f} MiB per call)")


if __name__ == "__main__":
    main()
