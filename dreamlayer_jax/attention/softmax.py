"""Softmax attention written with plain XLA ops, faster on the CPU than `jax.nn`'s.

    xla_attention(q[N, T, H, d], k[N, S, H, d], v[N, S, H, d], mask=...) -> [N, T, H, d]
    shared_kv_attention(q[B, L, T, H, d], k[B, L, S, H, d], v, k_shared[B, S2, H, d],
                        v_shared, shared_mask=bool[B, L, S2]) -> [B, L, T, H, d]
    grouped_kv_attention(q[B, T, H, d], k[B, G, S, H, d], v, mask=bool[B, T, G]) -> [B, T, H, d]

Same math as `jax.nn.dot_product_attention(..., implementation="xla")`: scores
`q k^T / sqrt(d)` in float32, masked scores replaced by the same large negative number
(so a row with every key masked averages all values, as there), softmax in float32,
probabilities cast to the values' dtype for the second product. What differs is the
schedule (docs/PERFORMANCE.md, "Layer scaling", what was slow):

- heads are moved in front once (`[N, H, T, d]`), so both products are plain batched
  matmuls (`jax.nn`'s grouped-query vmap gives XLA's CPU backend a layout it runs 2-5x
  slower);
- the softmax is normalised after the second product (`T * d` divisions, not `T * S`);
- the queries are cut into chunks whose score block stays under `CHUNK_BYTES`, run one
  after the other (`lax.map`). Large temporaries are what made layer attention slow on
  the CPU: glibc serves every block over 32 MiB with a fresh `mmap`, so each call
  page-faults the whole score tensor in again.

The two multi-block forms serve DreamLayer's layer attention without materialising
concatenated keys: the blocks' scores share one maximum and one denominator (exactly
the softmax over the concatenated keys), and the shared keys are read by every group
through the contraction instead of being broadcast and copied per group.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["CHUNK_BYTES", "grouped_kv_attention", "shared_kv_attention", "xla_attention"]

CHUNK_BYTES = 8 * 2**20
"""Largest float32 score block one chunk of queries may produce."""

FUSED_KEYS = 384
"""Up to this many keys XLA's CPU backend (jaxlib 0.10.2) runs plain softmax attention as
one tiled fusion that never holds the whole score tensor, so chunking would only add
loop overhead; from 512 keys on it materialises the scores (measured, see
docs/PERFORMANCE.md)."""


def _large_negative(dtype) -> jax.Array:
    """`jax.nn.dot_product_attention`'s fill value for masked scores."""
    return jnp.asarray(-0.7 * float(jnp.finfo(dtype).max), dtype)


def _heads_first(x: jax.Array) -> jax.Array:
    """`[..., S, H, d] -> [..., H, S, d]`."""
    return jnp.swapaxes(x, -3, -2)


def _scores(q: jax.Array, k: jax.Array, spec: str) -> jax.Array:
    """Scaled float32 scores of heads-first `q`, `k` under einsum `spec`."""
    scale = 1.0 / np.sqrt(q.shape[-1])
    s = jnp.einsum(spec, q, k, preferred_element_type=jnp.float32)
    return s * jnp.float32(scale)


def _masked(s: jax.Array, mask: jax.Array | None) -> jax.Array:
    return s if mask is None else jnp.where(mask, s, _large_negative(s.dtype))


def _weighted(e: jax.Array, v: jax.Array, spec: str) -> jax.Array:
    """Unnormalised `e @ v` in float32 (`e` cast to the values' dtype first)."""
    return jnp.einsum(spec, e.astype(v.dtype), v, preferred_element_type=jnp.float32)


def num_chunks(queries: int, score_elements: int, limit: int | None = None) -> int:
    """The fewest power-of-two chunks of `queries` (dividing it) whose float32 score
    block stays under `limit` bytes; `queries` itself if no such split exists."""
    limit = CHUNK_BYTES if limit is None else limit
    chunks = 1
    while score_elements * 4 // chunks > limit and queries % (2 * chunks) == 0:
        chunks *= 2
    return chunks


def _over_query_chunks(fn: Callable[..., jax.Array], qh: jax.Array,
                       per_query: Sequence[tuple[jax.Array | None, int]],
                       score_elements: int) -> jax.Array:
    """`fn(qh, *per_query_arrays)` computed chunk by chunk along the query axis.

    `qh[..., T, d]` (queries on axis -2), `per_query`: `(array, axis)` pairs cut along
    `axis` with the queries (an axis of size 1 or a None array is passed whole);
    `fn` returns `[..., T, dv]`.
    """
    t = qh.shape[-2]
    chunks = num_chunks(t, score_elements)
    whole = [a for a, _ in per_query]
    if chunks == 1:
        return fn(qh, *whole)

    def cut(x: jax.Array, axis: int) -> jax.Array:  # axis of size T -> [chunks, ..., T/c, ...]
        axis %= x.ndim
        x = x.reshape(*x.shape[:axis], chunks, t // chunks, *x.shape[axis + 1:])
        return jnp.moveaxis(x, axis, 0)

    sliced = [a is not None and a.shape[axis] == t for a, axis in per_query]
    xs = (cut(qh, -2), *(cut(a, ax) for (a, ax), s in zip(per_query, sliced) if s))

    def one(args):
        rest = iter(args[1:])
        return fn(args[0], *(next(rest) if s else a for a, s in zip(whole, sliced)))

    out = jax.lax.map(one, xs)  # [chunks, ..., T/c, dv]
    out = jnp.moveaxis(out, 0, -3)
    return out.reshape(*out.shape[:-3], t, out.shape[-1])


def xla_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                  mask: jax.Array | None = None) -> jax.Array:
    """`softmax(q k^T / sqrt(d)) v`, `q[N, T, H, d]`, `k, v[N, S, H, d]` -> `[N, T, H, d]`.

    `mask` is boolean and broadcasts against the scores `[N, H, T, S]` (e.g.
    `[N, 1, 1, S]` for a key mask, `[N, 1 | H, T, S]` in general); False hides a key.
    """
    qh, kh, vh = _heads_first(q), _heads_first(k), _heads_first(v)  # [N, H, *, d]
    if mask is not None and mask.ndim < 4:
        mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)

    def core(qc: jax.Array, m: jax.Array | None) -> jax.Array:
        s = _masked(_scores(qc, kh, "nhtd,nhsd->nhts"), m)
        e = jnp.exp(s - jax.lax.stop_gradient(jnp.max(s, axis=-1, keepdims=True)))
        return _weighted(e, vh, "nhts,nhsd->nhtd") / jnp.sum(e, axis=-1, keepdims=True)

    n, h, t, _ = qh.shape
    keys = kh.shape[2]
    elements = n * h * t * keys if keys > FUSED_KEYS else 0
    out = _over_query_chunks(core, qh, [(mask, 2)], elements)
    return _heads_first(out).astype(q.dtype)


def shared_kv_attention(q: jax.Array, k: jax.Array, v: jax.Array, k_shared: jax.Array,
                        v_shared: jax.Array, shared_mask: jax.Array | None = None
                        ) -> jax.Array:
    """Each group `l` attends to its own keys and to keys shared by all groups.

    `softmax(q_l [k_l ; k_shared]^T / sqrt(d)) [v_l ; v_shared]` without building
    `[k_l ; k_shared]`: `q[B, L, T, H, d]`, `k, v[B, L, S, H, d]` (no mask),
    `k_shared, v_shared[B, S2, H, d]`, `shared_mask bool[B, L, S2]` (which shared keys
    group `l` may read) -> `[B, L, T, H, d]`.
    """
    def heads_out(x):  # [B, L, S, H, d] -> [B, H, L, S, d]: batch dims (B, H) leading
        return jnp.transpose(x, (0, 3, 1, 2, 4))

    qh, kh, vh = heads_out(q), heads_out(k), heads_out(v)
    ksh, vsh = _heads_first(k_shared), _heads_first(v_shared)  # [B, H, S2, d]
    m = None if shared_mask is None else shared_mask[:, None, :, None, :]  # [B, 1, L, 1, S2]

    def core(qc: jax.Array) -> jax.Array:
        s_own = _scores(qc, kh, "bhltd,bhlsd->bhlts")
        s_sh = _masked(_scores(qc, ksh, "bhltd,bhsd->bhlts"), m)
        s_max = jnp.maximum(jnp.max(s_own, axis=-1, keepdims=True),
                            jnp.max(s_sh, axis=-1, keepdims=True))
        s_max = jax.lax.stop_gradient(s_max)
        e_own, e_sh = jnp.exp(s_own - s_max), jnp.exp(s_sh - s_max)
        total = jnp.sum(e_own, axis=-1, keepdims=True) + jnp.sum(e_sh, axis=-1, keepdims=True)
        return (_weighted(e_own, vh, "bhlts,bhlsd->bhltd")
                + _weighted(e_sh, vsh, "bhlts,bhsd->bhltd")) / total

    b, h, num_groups, t, _ = qh.shape
    out = _over_query_chunks(core, qh, [], b * h * num_groups * t * (kh.shape[3] + ksh.shape[2]))
    return jnp.transpose(out, (0, 2, 3, 1, 4)).astype(q.dtype)  # [B, L, T, H, d]


def grouped_kv_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                         mask: jax.Array | None = None) -> jax.Array:
    """Attention over keys that come in groups, with one mask bit per (query, group).

    `q[B, T, H, d]`, `k, v[B, G, S, H, d]` (the `G * S` keys, group-major),
    `mask bool[B, T, G]` -> `[B, T, H, d]`: the softmax runs over all `G * S` keys, as
    `xla_attention` with keys `[B, G * S]` and the mask repeated `S` times per group,
    without repeating it.
    """
    qh = _heads_first(q)  # [B, H, T, d]
    kh, vh = (jnp.transpose(x, (0, 3, 1, 2, 4)) for x in (k, v))  # [B, H, G, S, d]
    m = None if mask is None else mask[:, None, :, :, None]  # [B, 1, T, G, 1]

    def core(qc: jax.Array, mc: jax.Array | None) -> jax.Array:
        s = _masked(_scores(qc, kh, "bhtd,bhgsd->bhtgs"), mc)
        e = jnp.exp(s - jax.lax.stop_gradient(jnp.max(s, axis=(-2, -1), keepdims=True)))
        total = jnp.sum(e, axis=(-2, -1))[..., None]  # [B, H, T, 1]
        return _weighted(e, vh, "bhtgs,bhgsd->bhtd") / total

    b, h, t, _ = qh.shape
    out = _over_query_chunks(core, qh, [(m, 2)], b * h * t * kh.shape[2] * kh.shape[3])
    return _heads_first(out).astype(q.dtype)
