"""The paper variant's all-layer LSSA, on one device and partitioned over the layer axis.

Every query layer attends to the concatenated keys/values of the layers its scene's
`layer_mask` allows (by default all valid ones):

    joint_layer_attention(q[B, L, N, H, d], k[B, L, N, H, d], v, layer_mask=bool[B, L, L])
        -> [B, L, N, H, d]
    sharded_joint_layer_attention(q, k, v, layer_mask, mesh, method="allgather" | "ring")

`layer_mask[b, l, m]`: query layer `l` may read key layer `m` (one bit per pair, never
repeated over tokens on the XLA path). Scores are scaled by `1/sqrt(d)` and a row whose
keys are all masked averages every value, exactly as `jax.nn.dot_product_attention`.

The sharded form takes latents whose `L` axis is split over the mesh's `"layer"` axis
(`B` over `("data", "fsdp")`) and never gathers queries or outputs, only K/V:

- "allgather": one tiled `all_gather` of the local K and V over the layer axis, then the
  local query layers attend to all `L` layers' keys. Peak memory holds all of K/V.
- "ring": K/V blocks travel around the layer axis with `ppermute` (n - 1 hops); each hop
  adds the local queries' partial attention against the visiting block into a running
  (max, sum, weighted sum) in float32, as ring attention does. Peak memory holds two blocks.

Both move `(n - 1) / n` of all K/V into every device; benchmarks/layer_parallel.py and
docs/PERFORMANCE.md ("Layer-axis LSSA") compare them; `layer_attention_method`, the
"auto" rule, is a memory guard drawn from that measurement.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from dreamlayer_jax.attention.backends import attend
from dreamlayer_jax.attention.softmax import _masked, _over_query_chunks, _scores, _weighted
from dreamlayer_jax.errors import ConfigError

__all__ = ["METHODS", "RING_MIN_GATHERED_BYTES", "default_layer_mask", "joint_layer_attention",
           "layer_attention_method", "sharded_joint_layer_attention"]

METHODS = ("auto", "allgather", "ring")

RING_MIN_GATHERED_BYTES = 256 * 2**20
""""auto" picks the ring once the gathered K/V of one call would exceed this per device
(a memory guard, not a measured time crossover: docs/PERFORMANCE.md, "Layer-axis LSSA")."""


def default_layer_mask(layer_valid: jax.Array) -> jax.Array:
    """`bool[B, L] -> bool[B, L, L]`: every query layer reads every valid layer."""
    b, n = layer_valid.shape
    return jnp.broadcast_to(layer_valid[:, None, :], (b, n, n))


def _heads_out(x: jax.Array) -> jax.Array:
    """`[B, L, N, H, d] -> [B, H, L, N, d]` (batch dims B, H leading for the matmuls)."""
    return jnp.transpose(x, (0, 3, 1, 2, 4))


def _block_attention(qh: jax.Array, kh: jax.Array, vh: jax.Array, mask: jax.Array | None,
                     *, normalise: bool) -> jax.Array:
    """Query layers against a block of key layers, queries chunked under `CHUNK_BYTES`.

    `qh[B, H, Lq, T, d]`, `kh, vh[B, H, Lk, S, d]` (heads first), `mask bool[B, Lq, Lk]`.
    `normalise`: returns the attention output `[B, H, Lq, T, dv]` (float32). Otherwise
    the block's softmax statistics packed on the last axis, `[B, H, Lq, T, dv + 2]`:
    unnormalised `sum exp(s - m) v`, the row maximum `m`, and `sum exp(s - m)`.
    The scores are `[B, H, Lq, T, Lk, S]`: one batched matmul with keys `Lk * S` wide,
    K/V never copied per query layer.
    """
    m5 = None if mask is None else mask[:, None, :, None, :, None]  # [B, 1, Lq, 1, Lk, 1]

    def core(qc: jax.Array) -> jax.Array:
        s = _masked(_scores(qc, kh, "bhltd,bhmsd->bhltms"), m5)
        row_max = jax.lax.stop_gradient(jnp.max(s, axis=(-2, -1)))  # [B, H, Lq, T]
        e = jnp.exp(s - row_max[..., None, None])
        acc = _weighted(e, vh, "bhltms,bhmsd->bhltd")
        total = jnp.sum(e, axis=(-2, -1))[..., None]
        if normalise:
            return acc / total
        return jnp.concatenate([acc, row_max[..., None], total], axis=-1)

    b, h, lq, t, _ = qh.shape
    elements = b * h * lq * t * kh.shape[2] * kh.shape[3]
    return _over_query_chunks(core, qh, [], elements)


def joint_layer_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                          layer_mask: jax.Array | None = None, *, backend: str = "xla",
                          interpret: bool = False) -> jax.Array:
    """Every query layer attends to the concatenated keys of the layers it may read.

    `q[B, Lq, N, H, d]`, `k, v[B, Lk, S, H, d]` (self-attention: `Lk = Lq`, `S = N`; the
    all-gather form passes all `Lk` layers for its local `Lq`), `layer_mask bool[B, Lq, Lk]`
    (None: all) -> `[B, Lq, N, H, d]`. Unsharded; under `jit` with sharded inputs GSPMD
    partitions it as it sees fit (use `sharded_joint_layer_attention` to control the
    communication). `backend`: a concrete kernel ("xla", "cudnn", "splash"); the fused
    kernels take one key row per query row, so for them the query layers are folded into
    the batch and every row gets the `Lk * S` keys (broadcast) with a per-key mask.
    `interpret` runs splash in the Pallas interpreter (tests).
    """
    b, lq, n, heads, d = q.shape
    lk, s = k.shape[1], k.shape[2]
    if backend == "xla":
        out = _block_attention(_heads_out(q), _heads_out(k), _heads_out(v), layer_mask,
                               normalise=True)
        return jnp.transpose(out, (0, 2, 3, 1, 4)).astype(q.dtype)  # [B, Lq, N, H, dv]
    if layer_mask is None:
        layer_mask = jnp.ones((b, lq, lk), bool)

    def rows(x: jax.Array) -> jax.Array:  # [B, Lk, S, H, e] -> [B * Lq, Lk * S, H, e]
        flat = x.reshape(b, 1, lk * s, *x.shape[3:])
        return jnp.broadcast_to(flat, (b, lq, *flat.shape[2:])).reshape(b * lq, *flat.shape[2:])

    key_mask = jnp.repeat(layer_mask, s, axis=2).reshape(b * lq, lk * s)
    out = attend(q.reshape(b * lq, n, heads, d), rows(k), rows(v), key_mask=key_mask,
                 backend=backend, interpret=interpret)
    return out.reshape(b, lq, n, heads, v.shape[-1])


def _merge(state: jax.Array, block: jax.Array) -> jax.Array:
    """Merge two packed partials `[..., dv + 2]` (weighted sum, max, sum) in float32.

    Masked scores carry the finite fill of `jax.nn` (-0.7 * float32 max), never -inf,
    so a fully masked block has a finite maximum and the shifts `exp(m - m_new)` are
    never `exp(-inf + inf)`: against any block with a readable key its weight underflows
    to exactly 0, and if every block is masked all maxima are equal and the result is the
    mean of all values, as on one device. The `isfinite` guard still keeps an -inf
    maximum (an empty state, or a future -inf fill) from turning into NaN.
    """
    acc_a, m_a, l_a = state[..., :-2], state[..., -2:-1], state[..., -1:]
    acc_b, m_b, l_b = block[..., :-2], block[..., -2:-1], block[..., -1:]
    m_new = jnp.maximum(m_a, m_b)
    m_new = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
    wa, wb = jnp.exp(m_a - m_new), jnp.exp(m_b - m_new)
    return jnp.concatenate([acc_a * wa + acc_b * wb, m_new, l_a * wa + l_b * wb], axis=-1)


def _allgather_local(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, *,
                     axis: str, backend: str, interpret: bool) -> jax.Array:
    """Per-device body: `q, k, v[b, L/n, N, H, d]`, `mask[b, L/n, L]` -> `[b, L/n, N, H, d]`.

    On XLA the local K/V are moved heads-first before the gather, so the transpose
    copies one block, not all `L` layers.
    """
    if backend != "xla":
        k_all = jax.lax.all_gather(k, axis, axis=1, tiled=True)  # [b, L, N, H, d]
        v_all = jax.lax.all_gather(v, axis, axis=1, tiled=True)
        return joint_layer_attention(q, k_all, v_all, mask, backend=backend,
                                     interpret=interpret)
    kh, vh = (jax.lax.all_gather(_heads_out(x), axis, axis=2, tiled=True)  # [b, H, L, N, d]
              for x in (k, v))
    out = _block_attention(_heads_out(q), kh, vh, mask, normalise=True)
    return jnp.transpose(out, (0, 2, 3, 1, 4)).astype(q.dtype)


def _ring_local(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, *, axis: str,
                size: int) -> jax.Array:
    """Per-device body of the ring: same shapes as `_allgather_local`.

    A `fori_loop` over the hops, not a Python loop: unrolled, XLA (CPU, jaxlib 0.10.2)
    scheduled the independent hops' score blocks side by side, so the footprint grew
    with n (L=16, N=256, n=8: 88 MiB against 22 MiB in the loop, and no faster; see
    docs/PERFORMANCE.md), which defeats the ring's point; the loop reuses one hop's
    buffers. Inside a hop the `ppermute` of the visiting block to the next device and
    the attention against it depend only on the block, so the transfer can overlap the
    compute. The first hop (the local block) and the last run outside the loop: n - 1
    transfers in all.
    """
    qh, kh, vh = _heads_out(q), _heads_out(k), _heads_out(v)  # [b, H, L/n, N, d]
    local = qh.shape[2]
    me = jax.lax.axis_index(axis)
    perm = [(i, (i + 1) % size) for i in range(size)]

    def partial_of(hop: int | jax.Array, kh: jax.Array, vh: jax.Array) -> jax.Array:
        src = (me - hop) % size  # the device whose K/V block is visiting
        block_mask = jax.lax.dynamic_slice_in_dim(mask, src * local, local, axis=2)
        return _block_attention(qh, kh, vh, block_mask, normalise=False)

    def step(hop: jax.Array, carry: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
        state, kh, vh = carry
        sent = jax.lax.ppermute((kh, vh), axis, perm)  # independent of this hop's compute
        return (_merge(state, partial_of(hop, kh, vh)), *sent)

    state = partial_of(0, kh, vh)
    if size > 1:
        carry = (state, *jax.lax.ppermute((kh, vh), axis, perm))
        carry = jax.lax.fori_loop(1, size - 1, step, carry)
        state = _merge(carry[0], partial_of(size - 1, carry[1], carry[2]))
    out = state[..., :-2] / state[..., -1:]
    return jnp.transpose(out, (0, 2, 3, 1, 4)).astype(q.dtype)


def layer_attention_method(kv_shape: Sequence[int], itemsize: int, layer_axis_size: int,
                           *, ring_min_bytes: int = RING_MIN_GATHERED_BYTES) -> str:
    """The "auto" choice between "allgather" and "ring" for K/V of global shape
    `kv_shape = [B, L, N, H, d]` (per-device batch if B is sharded) and `itemsize` bytes.

    Measured (docs/PERFORMANCE.md, "Layer-axis LSSA", 8 fake devices on a 2-core CPU):
    neither method was faster beyond the noise; the ring's footprint was never larger
    and from n = 4 on smaller (one visiting block of K/V resident instead of all L
    layers: 6.8 against 22.9 MiB at L=8, N=256, n=8). Its transfer overlap can only pay
    on a real interconnect, unmeasured here. So the rule is a memory guard: all-gather
    (one collective, one pass of matmuls) unless the gathered K and V of one call
    exceed `ring_min_bytes` per device.
    """
    if layer_axis_size <= 1:
        return "allgather"
    gathered = 2 * math.prod(kv_shape) * itemsize
    return "ring" if gathered > ring_min_bytes else "allgather"


def sharded_joint_layer_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                                  layer_mask: jax.Array | None, mesh: Mesh, *,
                                  method: str = "auto", layer_axis: str = "layer",
                                  batch_axes: Sequence[str] = ("data", "fsdp"),
                                  backend: str = "xla", interpret: bool = False) -> jax.Array:
    """`joint_layer_attention` with `L` sharded over `mesh`'s `layer_axis`.

    `q, k, v[B, L, N, H, d]` with `B` sharded over `batch_axes` and `L` over `layer_axis`,
    `layer_mask bool[B, L, L]` (query layers sharded like `L`, key layers replicated;
    None: all) -> `[B, L, N, H, d]`, sharded like `q`. `L` must divide by the layer-axis
    size, `B` by the batch axes' product. `method`: "allgather", "ring" or "auto"
    (`layer_attention_method`); `backend` is the per-device kernel of "allgather" (the
    ring needs the softmax statistics, so it runs on XLA).
    """
    if method not in METHODS:
        raise ConfigError(f"layer attention method {method!r} must be one of {list(METHODS)}")
    size = mesh.shape[layer_axis]
    b, num_layers = q.shape[:2]
    if num_layers % size:
        raise ConfigError(f"{num_layers} layers do not split over a layer axis of {size}")
    if method == "auto":
        shards = math.prod(mesh.shape[a] for a in batch_axes)
        method = layer_attention_method((max(1, b // shards), *k.shape[1:]),
                                        k.dtype.itemsize, size)
    if method == "ring" and backend != "xla":
        raise ConfigError(f"the ring method runs on XLA only (backend={backend!r})")
    if layer_mask is None:
        layer_mask = jnp.ones((b, num_layers, num_layers), bool)
    batch = tuple(batch_axes) or None
    spec = P(batch, layer_axis, None, None, None)
    if method == "ring":
        body = partial(_ring_local, axis=layer_axis, size=size)
    else:
        body = partial(_allgather_local, axis=layer_axis, backend=backend, interpret=interpret)
    fn = jax.shard_map(body, mesh=mesh, in_specs=(spec, spec, spec, P(batch, layer_axis, None)),
                       out_specs=spec)
    return fn(q, k, v, layer_mask)
