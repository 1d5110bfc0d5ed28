"""Attention kernels behind one function: XLA, cuDNN flash attention, TPU splash attention.

    attend(q, k, v, key_mask=..., backend="auto")

`q[N, T, H, d]`, `k, v[N, S, H, d]` -> `[N, T, H, d]`, scaled by `1/sqrt(d)`. Masks come in
two kinds, because the kernels can express different things:

- `key_mask[N, S]`: which keys every query of a row may read (LSSA: a layer reads its own
  tokens and the global layer's tokens inside its region). Splash expresses it exactly
  with segment ids (queries in segment 1, readable keys in 1, the others in 0), cuDNN
  as a mask broadcast over queries.
- `mask[N, 1 | H, T, S]`: a general mask (CACA's global layer: which layer's prompt a
  pixel reads). cuDNN takes it; splash cannot (its masks are static, these depend on the
  boxes at run time), so such calls run on XLA under "splash".

Backends (`resolve_backend`): "xla" everywhere (`attention.softmax.xla_attention`: the
math of `jax.nn.dot_product_attention(implementation="xla")`, scheduled for speed);
"cudnn" on NVIDIA GPUs, computing in bfloat16 (cuDNN's flash kernels take 16-bit inputs);
"splash" on TPUs (`jax.experimental.pallas.ops.tpu.splash_attention`; `interpret=True`
runs the same kernel on any platform, which is how the tests check it). "auto" picks
cudnn on GPU, splash on TPU, xla elsewhere. A shape a kernel refuses (head size,
sequence length not a multiple of its block) falls back to XLA with a warning, once per
shape.
"""

from __future__ import annotations

import functools
import math
import warnings

import jax
import jax.numpy as jnp

from dreamlayer_jax.attention.softmax import xla_attention
from dreamlayer_jax.errors import ConfigError

BACKENDS = ("auto", "xla", "cudnn", "splash")
_PLATFORM_BACKEND = {"gpu": "cudnn", "cuda": "cudnn", "tpu": "splash"}
_NEEDS = {"cudnn": ("gpu", "cuda"), "splash": ("tpu",)}


def resolve_backend(name: str, platform: str | None = None) -> str:
    """The concrete backend for `name` on `platform` (default: JAX's default backend).

    ConfigError for an unknown name, or a kernel the platform does not have.
    """
    if name not in BACKENDS:
        raise ConfigError(f"attention_backend={name!r} must be one of {list(BACKENDS)}")
    platform = platform or jax.default_backend()
    if name == "auto":
        return _PLATFORM_BACKEND.get(platform, "xla")
    if name in _NEEDS and platform not in _NEEDS[name]:
        raise ConfigError(f"attention_backend={name!r} needs a "
                          f"{'NVIDIA GPU' if name == 'cudnn' else 'TPU'}; this machine runs "
                          f"on {platform} (use 'auto' or 'xla')")
    return name


def attend(q: jax.Array, k: jax.Array, v: jax.Array, *, key_mask: jax.Array | None = None,
           mask: jax.Array | None = None, backend: str = "xla",
           interpret: bool = False) -> jax.Array:
    """Softmax attention with one of the kernels (module docstring); `backend` is a
    concrete one ("xla", "cudnn" or "splash"), see `resolve_backend`."""
    if key_mask is not None and mask is not None:
        raise ValueError("pass key_mask or mask, not both")
    if backend == "splash" and mask is None:
        out = _fallback_on_refusal(_splash, q, k, v, key_mask, interpret=interpret)
        if out is not None:
            return out
    elif backend == "cudnn":
        full = key_mask[:, None, None, :] if key_mask is not None else mask
        out = _fallback_on_refusal(_cudnn, q, k, v, full)
        if out is not None:
            return out
    elif backend not in ("xla", "splash"):
        raise ConfigError(f"attention backend {backend!r} is not a concrete kernel")
    full = key_mask[:, None, None, :] if key_mask is not None else mask
    return xla_attention(q, k, v, full)


def _fallback_on_refusal(kernel, q, k, v, m, **kw) -> jax.Array | None:
    try:
        return kernel(q, k, v, m, **kw)
    except (ValueError, NotImplementedError, TypeError) as exc:
        _warn_once(kernel.__name__.strip("_"), q.shape, k.shape, str(exc).split("\n")[0])
        return None


@functools.cache
def _warn_once(kernel: str, q_shape, k_shape, reason: str) -> None:
    warnings.warn(f"{kernel} attention refused q{list(q_shape)} k{list(k_shape)} ({reason}); "
                  "using XLA for it", stacklevel=4)


def _cudnn(q, k, v, mask):
    dtype = q.dtype
    half = (jnp.bfloat16, jnp.float16)
    cast = (lambda x: x) if dtype in half else (lambda x: x.astype(jnp.bfloat16))
    out = jax.nn.dot_product_attention(cast(q), cast(k), cast(v), mask=mask,
                                       implementation="cudnn")
    return out.astype(dtype)


def _block(length: int, preferred: int = 512) -> int:
    """The largest power-of-two block <= `preferred` that divides `length` (>= 8)."""
    block = preferred
    while block >= 8:
        if length % block == 0:
            return block
        block //= 2
    raise ValueError(f"sequence length {length} is not a multiple of 8")


@functools.lru_cache(maxsize=64)
def _splash_kernel(heads: int, q_len: int, kv_len: int, interpret: bool):
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_kernel as sk,
    )
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_mask as sm,
    )

    block_q, block_kv = _block(q_len), _block(kv_len)
    sizes = sk.BlockSizes(block_q=block_q, block_kv=block_kv, block_kv_compute=block_kv)
    mask = sm.MultiHeadMask([sm.FullMask((q_len, kv_len)) for _ in range(heads)])
    return sk.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                              interpret=interpret), sk.SegmentIds


def _splash(q, k, v, key_mask, *, interpret: bool = False):
    n, q_len, heads, d = q.shape
    kv_len = k.shape[1]
    kernel, segment_ids = _splash_kernel(heads, q_len, kv_len, interpret)
    padded = d if interpret else max(128, -(-d // 128) * 128)  # TPU lanes: d to 128s

    def heads_first(x):  # [S, H, d] -> [H, S, d'] (zero-padded d: same scores and values)
        x = jnp.swapaxes(x, 0, 1)
        return jnp.pad(x, ((0, 0), (0, 0), (0, padded - d))) if padded != d else x

    def one(q1, k1, v1, km):
        ids = segment_ids(q=jnp.ones((q_len,), jnp.int32), kv=km.astype(jnp.int32))
        out = kernel(heads_first(q1 / math.sqrt(d)).astype(q.dtype), heads_first(k1),
                     heads_first(v1), segment_ids=ids)
        return jnp.swapaxes(out[..., :d], 0, 1)

    km = jnp.ones((n, kv_len), bool) if key_mask is None else key_mask
    return jax.vmap(one)(q, k, v, km).astype(q.dtype)

