"""`attention.softmax` against `jax.nn.dot_product_attention`, whole and chunked."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamlayer_jax.attention import softmax

B, L, T, S, HEADS, D, G = 2, 3, 16, 7, 2, 4, 4


def reference(q, k, v, mask=None):
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")


@pytest.fixture(params=[None, 64], ids=["whole", "chunked"])
def chunk_bytes(request, monkeypatch):
    """Run every test once as is and once with the queries cut into chunks."""
    if request.param is not None:
        monkeypatch.setattr(softmax, "CHUNK_BYTES", request.param)
        monkeypatch.setattr(softmax, "FUSED_KEYS", 0)
    return request.param


def normal(key, *shape):
    return jax.random.normal(key, shape)


def test_chunk_count_is_a_power_of_two_dividing_the_queries():
    assert softmax.num_chunks(256, 10, limit=1000) == 1
    assert softmax.num_chunks(256, 1000, limit=1000) == 4
    assert softmax.num_chunks(12, 10**9, limit=1) == 4  # 12 = 4 * 3: no finer split


def test_xla_attention_equals_jax_nn_with_key_and_general_masks(chunk_bytes):
    kq, kk, kv, km = jax.random.split(jax.random.key(0), 4)
    q, k, v = normal(kq, B, T, HEADS, D), normal(kk, B, S, HEADS, D), normal(kv, B, S, HEADS, D)
    general = jax.random.bernoulli(km, 0.5, (B, 1, T, S))
    general = general.at[0, 0, 3].set(False)  # a query that sees no key
    key_mask = jax.random.bernoulli(km, 0.5, (B, 1, 1, S)).at[:, :, :, 0].set(True)
    for mask in (None, general, key_mask):
        np.testing.assert_allclose(softmax.xla_attention(q, k, v, mask), reference(q, k, v, mask),
                                   atol=2e-6)


def test_shared_kv_attention_equals_attention_over_concatenated_keys(chunk_bytes):
    keys = jax.random.split(jax.random.key(1), 6)
    q, k, v = (normal(c, B, L, T, HEADS, D) for c in keys[:3])
    k_sh, v_sh = normal(keys[3], B, S, HEADS, D), normal(keys[4], B, S, HEADS, D)
    see = jax.random.bernoulli(keys[5], 0.5, (B, L, S)).at[:, -1].set(False)

    def concatenated(q, k, v):
        fold = lambda x: x.reshape(B * L, *x.shape[2:])  # noqa: E731
        kc = jnp.concatenate([k, jnp.broadcast_to(k_sh[:, None], (B, L, S, HEADS, D))], 2)
        vc = jnp.concatenate([v, jnp.broadcast_to(v_sh[:, None], (B, L, S, HEADS, D))], 2)
        mask = jnp.concatenate([jnp.ones((B, L, T), bool), see], 2)
        return reference(fold(q), fold(kc), fold(vc), fold(mask)[:, None, None, :])

    out = softmax.shared_kv_attention(q, k, v, k_sh, v_sh, see)
    np.testing.assert_allclose(out.reshape(B * L, T, HEADS, D), concatenated(q, k, v), atol=2e-6)
    # The gradients too (the sampler is jitted, the trainer differentiates through it).
    grad = jax.grad(lambda q: jnp.sum(jnp.sin(softmax.shared_kv_attention(q, k, v, k_sh, v_sh,
                                                                          see))))(q)
    ref_grad = jax.grad(lambda q: jnp.sum(jnp.sin(concatenated(q, k, v))))(q)
    np.testing.assert_allclose(grad, ref_grad, atol=2e-6)


def test_grouped_kv_attention_equals_a_mask_repeated_over_each_group(chunk_bytes):
    kq, kk, kv, km = jax.random.split(jax.random.key(2), 4)
    q = normal(kq, B, T, HEADS, D)
    k, v = normal(kk, B, G, S, HEADS, D), normal(kv, B, G, S, HEADS, D)
    mask = jax.random.bernoulli(km, 0.5, (B, T, G)).at[:, :, -1].set(True)
    flat = lambda x: x.reshape(B, G * S, HEADS, D)  # noqa: E731
    expected = reference(q, flat(k), flat(v), jnp.repeat(mask, S, axis=2)[:, None])
    np.testing.assert_allclose(softmax.grouped_kv_attention(q, k, v, mask), expected, atol=2e-6)


def test_bfloat16_inputs_keep_their_dtype_and_stay_close():
    kq, kk, kv = jax.random.split(jax.random.key(3), 3)
    q, k, v = (normal(c, B, T, HEADS, D).astype(jnp.bfloat16) for c in (kq, kk, kv))
    out = softmax.xla_attention(q, k, v)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(out.astype(jnp.float32), reference(q, k, v).astype(jnp.float32),
                               atol=2e-2)
