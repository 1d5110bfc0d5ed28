"""Multi-head attention of Stable Diffusion's transformer blocks, with a pluggable kernel.

The attention itself (softmax of scaled scores times values) is an `AttendFn` on
`[N, T, heads, head_dim]` arrays; by default `jax.nn.dot_product_attention`. The DreamLayer
UNet swaps in layer-aware functions through a `LayerAttentionContext` without touching
the projections, so pretrained weights keep working unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import jax
import jax.numpy as jnp
from flax import nnx

from dreamlayer_jax.attention.softmax import xla_attention

AttendFn = Callable[[jax.Array, jax.Array, jax.Array], Any]
"""`fn(q[N, Tq, heads, d], k[N, Tk, heads, d], v[N, Tk, heads, d]) -> [N, Tq, heads, d]`.

The function applies the `1 / sqrt(d)` scale itself, as `jax.nn.dot_product_attention` does.
A function may return `(out, record)` instead: `Attention` then sows `record` (any pytree)
as an `nnx.Intermediate` named `RECORD`, for the caller to `nnx.pop` (the paper variant's
context maps come out of the attention's own softmax this way).
"""

RECORD = "attention_record"


class LayerAttentionContext(Protocol):
    """What `Transformer2DModel` asks of the `layer_ctx` object passed through the UNet."""

    @property
    def num_layers(self) -> int:
        """`L`: rows of the folded batch `[B*L, ...]` come in groups of `L` layers."""
        ...

    def attention_fns(self, h: int, w: int) -> tuple[AttendFn | None, AttendFn | None]:
        """The (self-attention, cross-attention) functions of a block at spatial size `h x w`.

        `None` for either means plain `jax.nn.dot_product_attention`.
        """
        ...

    def mix_hidden(self, x: jax.Array) -> jax.Array:
        """A transformer's input `x[B*L, h, w, C]`, rewritten before its blocks run."""
        ...


def dot_product_attend(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """Plain softmax attention, `[N, Tq, heads, d]` from q, k, v in `[N, T, heads, d]`.

    On the CPU `attention.softmax.xla_attention` (same math, 2-4x faster there, see
    docs/PERFORMANCE.md); elsewhere `jax.nn.dot_product_attention`, which may pick a
    fused kernel.
    """
    if jax.default_backend() == "cpu":
        return xla_attention(q, k, v)
    return jax.nn.dot_product_attention(q, k, v)


class Attention(nnx.Module):
    """Self-attention (`context=None`) or cross-attention over `context[N, Tk, context_dim]`.

    `x[N, Tq, query_dim] -> [N, Tq, query_dim]`: q/k/v projections without bias, the
    attention per head, then `to_out.0` (with bias). `to_out.1` is diffusers' dropout slot,
    a no-op here. With `upcast` the attention runs in float32 whatever the compute dtype.

    `to_k_fg`, `to_v_fg` (None unless `add_foreground_kv` made them): the paper variant's
    separate key/value projections of the foreground slots `1 .. L-2` of each group of
    `num_layers` rows.
    """

    def __init__(
        self,
        query_dim: int,
        *,
        heads: int,
        head_dim: int,
        context_dim: int | None = None,
        upcast: bool = False,
        rngs: nnx.Rngs,
        dtype: jnp.dtype = jnp.float32,
    ):
        inner = heads * head_dim
        context_dim = query_dim if context_dim is None else context_dim
        self.heads = heads
        self.head_dim = head_dim
        self.upcast = upcast
        self.to_q = nnx.Linear(query_dim, inner, use_bias=False, dtype=dtype, rngs=rngs)
        self.to_k = nnx.Linear(context_dim, inner, use_bias=False, dtype=dtype, rngs=rngs)
        self.to_v = nnx.Linear(context_dim, inner, use_bias=False, dtype=dtype, rngs=rngs)
        self.to_out = nnx.List(
            [nnx.Linear(inner, query_dim, dtype=dtype, rngs=rngs), nnx.Dropout(0.0)]
        )
        self.to_k_fg: nnx.Module | None = nnx.data(None)
        self.to_v_fg: nnx.Module | None = nnx.data(None)

    def _split_heads(self, x: jax.Array) -> jax.Array:
        n, t, _ = x.shape
        return x.reshape(n, t, self.heads, self.head_dim)

    def __call__(
        self,
        x: jax.Array,
        context: jax.Array | None = None,
        *,
        attend: AttendFn | None = None,
        num_layers: int | None = None,
    ) -> jax.Array:
        """`num_layers`: the rows' layer grouping, needed by the foreground K/V pair."""
        context = x if context is None else context
        q = self._split_heads(self.to_q(x))
        k = self._split_heads(self._project(self.to_k, self.to_k_fg, context, num_layers))
        v = self._split_heads(self._project(self.to_v, self.to_v_fg, context, num_layers))
        compute_dtype = q.dtype
        if self.upcast:
            q, k, v = (a.astype(jnp.float32) for a in (q, k, v))
        out = (attend or dot_product_attend)(q, k, v)
        if isinstance(out, tuple):
            out, record = out
            self.sow(nnx.Intermediate, RECORD, record)
        out = out.astype(compute_dtype)
        n, t = out.shape[:2]
        out = out.reshape(n, t, self.heads * self.head_dim)
        for layer in self.to_out:
            out = layer(out)
        return out

    @staticmethod
    def _project(base: nnx.Module, fg: nnx.Module | None, context: jax.Array,
                 num_layers: int | None) -> jax.Array:
        """`base(context)`, with the foreground slots' rows through `fg` when it exists."""
        if fg is None:
            return base(context)
        if num_layers is None or num_layers < 3:
            raise ValueError("a foreground K/V pair needs the rows' num_layers (>= 3)")
        c5 = context.reshape(-1, num_layers, *context.shape[1:])
        parts = [base(c5[:, :1]), fg(c5[:, 1:-1]), base(c5[:, -1:])]
        return jnp.concatenate(parts, axis=1).reshape(*context.shape[:-1], -1)


def add_foreground_kv(module: nnx.Module) -> int:
    """Give every `Attention` inside `module` a foreground K/V pair, initialised as a copy
    of its `to_k` / `to_v` (LoRA adapters included); returns how many."""
    count = 0
    for _, sub in list(module.iter_modules()):
        if isinstance(sub, Attention) and sub.to_k_fg is None:
            sub.to_k_fg = nnx.clone(sub.to_k)
            sub.to_v_fg = nnx.clone(sub.to_v)
            count += 1
    return count
