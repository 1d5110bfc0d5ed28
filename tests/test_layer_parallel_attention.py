"""`parallel.layer_attention`: the all-layer LSSA, on one device and over the layer axis.

A float64 numpy softmax over the concatenated keys is the reference; the sharded
methods run on meshes with a layer axis of 2, 4 and 8 (8 fake CPU devices, set by the
Makefile's XLA_FLAGS) and must equal the single-device result.
"""

import re
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamlayer_jax.attention import softmax
from dreamlayer_jax.errors import ConfigError
from dreamlayer_jax.parallel.layer_attention import (
    default_layer_mask,
    joint_layer_attention,
    layer_attention_method,
    sharded_joint_layer_attention,
)
from dreamlayer_jax.parallel.mesh import layer_sharding, make_mesh

B, L, N, HEADS, D = 4, 8, 16, 2, 8
VALID = [8, 5, 6, 3]  # valid layers per scene; the rest are padding

needs_8 = pytest.mark.skipif(
    jax.device_count() < 8,
    reason="needs 8 devices: XLA_FLAGS=--xla_force_host_platform_device_count=8 (the Makefile "
           "sets it)")


def numpy_reference(q, k, v, layer_mask):
    """Explicit softmax over each scene's `L * N` concatenated keys, in float64, masked
    keys filled with `jax.nn`'s -0.7 * float32 max (a row with none averages all values)."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    fill = -0.7 * float(np.finfo(np.float32).max)
    out = np.zeros_like(q)
    for b in range(q.shape[0]):
        keys, values = k[b].reshape(-1, HEADS, D), v[b].reshape(-1, HEADS, D)
        for lq in range(q.shape[1]):
            s = np.einsum("thd,shd->hts", q[b, lq], keys) / np.sqrt(D)
            see = np.repeat(np.asarray(layer_mask[b, lq]), N)
            s = np.where(see[None, None, :], s, fill)
            p = np.exp(s - s.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            out[b, lq] = np.einsum("hts,shd->thd", p, values)
    return out


@pytest.fixture(scope="module")
def data():
    """q, k, v `[B, L, N, H, d]` and two masks `[B, L, L]`: the default (all valid layers)
    and a custom one (eq. 15's decomposition: a layer restricted to its own block; a
    layer reading one layer on another shard; a valid layer reading nothing)."""
    kq, kk, kv = jax.random.split(jax.random.key(0), 3)
    q, k, v = (jax.random.normal(c, (B, L, N, HEADS, D)) for c in (kq, kk, kv))
    valid = jnp.arange(L)[None, :] < jnp.asarray(VALID)[:, None]
    default = default_layer_mask(valid)
    custom = default.at[0, 2].set(jnp.arange(L) == 2)
    custom = custom.at[1, 0].set(jnp.arange(L) == 4)
    custom = custom.at[3, 1].set(False)
    return q, k, v, {"default": default, "custom": custom}


@pytest.fixture(scope="module")
def single(data):
    """The single-device outputs per mask and the gradients (custom mask)."""
    q, k, v, masks = data
    fn = jax.jit(joint_layer_attention)
    outs = {name: fn(q, k, v, m) for name, m in masks.items()}
    grads = jax.jit(jax.grad(_loss, argnums=(0, 1, 2)), static_argnums=4)(
        q, k, v, masks["custom"], joint_layer_attention)
    return outs, grads


def _loss(q, k, v, mask, attention):
    return jnp.sum(jnp.sin(attention(q, k, v, mask)))


def test_default_mask_reads_every_valid_layer(data):
    mask = data[3]["default"]
    assert mask.shape == (B, L, L)
    np.testing.assert_array_equal(mask[1, 0], np.arange(L) < 5)
    np.testing.assert_array_equal(mask[1, 7], np.arange(L) < 5)  # padded query: finite


@pytest.mark.parametrize("name", ["default", "custom"])
def test_joint_attention_equals_the_numpy_softmax(data, single, name):
    q, k, v, masks = data
    out = single[0][name]
    assert out.shape == (B, L, N, HEADS, D) and np.isfinite(out).all()
    np.testing.assert_allclose(out, numpy_reference(q, k, v, masks[name]), atol=1e-5)


def test_joint_attention_with_chunked_queries(data, single, monkeypatch):
    q, k, v, masks = data
    monkeypatch.setattr(softmax, "CHUNK_BYTES", 4096)  # 16 query chunks of 1
    out = jax.jit(joint_layer_attention)(q, k, v, masks["custom"])
    np.testing.assert_allclose(out, single[0]["custom"], atol=1e-6)


def test_splash_kernel_with_folded_query_layers(data, single):
    q, k, v, masks = data  # the TPU kernel through the Pallas interpreter
    out = joint_layer_attention(q[:1], k[:1], v[:1], masks["default"][:1], backend="splash",
                                interpret=True)
    np.testing.assert_allclose(out, single[0]["default"][:1], atol=2e-5)


def _hlo_results(hlo: str, op: str) -> list[tuple[int, ...]]:
    """Result shapes of every `op` instruction of compiled HLO text, or of its `-done`
    half where it runs asynchronously (this XLA prints no operand shapes; an all-gather's
    operand is its result over the axis size, a collective-permute's is its result).
    Tuple results count once per element."""
    shapes = []
    for line in hlo.splitlines():
        found = re.search(rf"=\s*(\(.*?\)|\S+)\s+{op}(?:-done)?\(", line)
        if found:
            shapes += [tuple(int(x) for x in dims.split(",") if x)
                       for dims in re.findall(r"[a-z]+\d*\[([\d,]*)\]", found.group(1))]
    return shapes


@pytest.fixture(scope="module", params=[2, 4, 8], ids=lambda n: f"layer{n}")
def sharded(request, data):
    """Per mesh: the inputs placed on it and, per method, the compiled function (one
    compilation, used for its outputs and its HLO)."""
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices: XLA_FLAGS=--xla_force_host_platform_device_count=8")
    n = request.param
    mesh = make_mesh(data=-1, fsdp=1, layer=n)
    q, k, v, masks = data
    put = lambda x: jax.device_put(x, layer_sharding(mesh, x.ndim))  # noqa: E731
    args = (put(q), put(k), put(v), put(masks["custom"]))
    compiled = {m: jax.jit(partial(sharded_joint_layer_attention, mesh=mesh, method=m))
                .lower(*args).compile() for m in ("allgather", "ring")}
    return n, mesh, args, compiled


@needs_8
@pytest.mark.parametrize("method", ["allgather", "ring"])
def test_sharded_methods_equal_single_device(sharded, single, method):
    _, _, args, compiled = sharded
    out = compiled[method](*args)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, single[0]["custom"], atol=1e-5)


@needs_8
def test_sharded_with_the_default_mask(sharded, data, single):
    _, mesh, args, _ = sharded
    fn = jax.jit(partial(sharded_joint_layer_attention, mesh=mesh, method="ring"))
    mask = jax.device_put(data[3]["default"], layer_sharding(mesh, 3))
    np.testing.assert_allclose(fn(*args[:3], mask), single[0]["default"], atol=1e-5)


@needs_8
def test_allgather_gathers_only_k_and_v(sharded):
    n, _, _, compiled = sharded
    block = B * L // 8 * N * HEADS * D  # elements of one device's K shard (8 devices)
    hlo = compiled["allgather"].as_text()
    gathered = _hlo_results(hlo, "all-gather")
    assert len(gathered) == 2, gathered  # K and V, not q (same shape: so counted)
    assert all(np.prod(s) == n * block for s in gathered), gathered  # all L layers of a shard
    assert not _hlo_results(hlo, "all-to-all") and not _hlo_results(hlo, "collective-permute")


@needs_8
def test_ring_permutes_only_k_and_v_blocks(sharded):
    n, _, _, compiled = sharded
    hlo = compiled["ring"].as_text()
    assert not _hlo_results(hlo, "all-gather") and not _hlo_results(hlo, "all-to-all")
    moved = _hlo_results(hlo, "collective-permute")
    block = B * L // 8 * N * HEADS * D
    # K and V of the first hop, and of the loop body that runs the other n - 2 hops
    assert len(moved) == (2 if n == 2 else 4), moved
    assert all(np.prod(s) == block for s in moved), moved


@needs_8
def test_ring_gradients_equal_single_device(sharded, single):
    _, mesh, args, _ = sharded
    ring = partial(sharded_joint_layer_attention, mesh=mesh, method="ring")
    grads = jax.jit(jax.grad(_loss, argnums=(0, 1, 2)), static_argnums=4)(*args, ring)
    for got, want in zip(grads, single[1]):
        np.testing.assert_allclose(got, want, atol=1e-4)


@needs_8
def test_ring_with_chunked_queries(data, single, monkeypatch):
    mesh = make_mesh(data=-1, fsdp=1, layer=4)
    monkeypatch.setattr(softmax, "CHUNK_BYTES", 4096)
    q, k, v, masks = data
    out = jax.jit(partial(sharded_joint_layer_attention, mesh=mesh, method="ring"))(
        q, k, v, masks["custom"])
    np.testing.assert_allclose(out, single[0]["custom"], atol=1e-5)


def test_auto_rule_and_bad_arguments(data):
    assert layer_attention_method((1, 4, 4096, 8, 40), 2, 4) == "allgather"
    assert layer_attention_method((1, 16, 4096, 8, 160), 2, 16) == "ring"
    assert layer_attention_method((1, 16, 4096, 8, 160), 2, 1) == "allgather"
    q, k, v, masks = data
    mesh = make_mesh(data=1, fsdp=1, layer=jax.device_count())
    with pytest.raises(ConfigError, match="method"):
        sharded_joint_layer_attention(q, k, v, None, mesh, method="tree")
    if jax.device_count() > 1:
        with pytest.raises(ConfigError, match="do not split"):
            sharded_joint_layer_attention(q[:, :3], k[:, :3], v[:, :3], None, mesh)
