"""Attention backends: each kernel available here gives XLA's result; choosing one that
the machine lacks is one clear error."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamlayer_jax.attention.backends import attend, resolve_backend
from dreamlayer_jax.errors import ConfigError

N, T, S, H, D = 3, 64, 128, 2, 8  # LSSA-like: 64 queries, 2 x 64 keys


def _inputs(dtype=jnp.float32):
    kq, kk, kv, km = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(kq, (N, T, H, D), dtype)
    k = jax.random.normal(kk, (N, S, H, D), dtype)
    v = jax.random.normal(kv, (N, S, H, D), dtype)
    key_mask = jax.random.bernoulli(km, 0.6, (N, S)).at[:, :T].set(True)  # own keys
    return q, k, v, key_mask


def _reference(q, k, v, full_mask):
    f32 = [x.astype(jnp.float32) for x in (q, k, v)]
    return np.asarray(jax.nn.dot_product_attention(*f32, mask=full_mask, implementation="xla"))


def test_auto_picks_the_platforms_kernel_and_refuses_missing_ones():
    assert resolve_backend("auto", "cpu") == "xla"
    assert resolve_backend("auto", "gpu") == "cudnn"
    assert resolve_backend("auto", "tpu") == "splash"
    assert resolve_backend("xla", "tpu") == "xla"
    with pytest.raises(ConfigError, match="needs a NVIDIA GPU"):
        resolve_backend("cudnn", "cpu")
    with pytest.raises(ConfigError, match="needs a TPU"):
        resolve_backend("splash", "gpu")
    with pytest.raises(ConfigError, match="must be one of"):
        resolve_backend("flash", "cpu")


def test_splash_kernel_with_a_key_mask_equals_xla():
    # the TPU kernel itself, run by the Pallas interpreter on this machine
    q, k, v, key_mask = _inputs()
    out = attend(q, k, v, key_mask=key_mask, backend="splash", interpret=True)
    want = _reference(q, k, v, key_mask[:, None, None, :])
    np.testing.assert_allclose(np.asarray(out), want, atol=2e-5)
    unmasked = attend(q, k, v, backend="splash", interpret=True)
    np.testing.assert_allclose(np.asarray(unmasked), _reference(q, k, v, None), atol=2e-5)


def test_splash_runs_a_general_mask_and_a_refused_shape_on_xla():
    q, k, v, _ = _inputs()
    mask = jax.random.bernoulli(jax.random.key(5), 0.5, (N, 1, T, S)).at[..., 0].set(True)
    out = attend(q, k, v, mask=mask, backend="splash", interpret=True)
    np.testing.assert_allclose(np.asarray(out), _reference(q, k, v, mask), atol=1e-6)
    odd = k[:, :77], v[:, :77]  # CLIP's 77 tokens: not a multiple of a splash block
    with pytest.warns(UserWarning, match="using XLA"):
        out = attend(q, *odd, backend="splash", interpret=True)
    np.testing.assert_allclose(np.asarray(out), _reference(q, *odd, None), atol=1e-6)


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN needs an NVIDIA GPU")
def test_cudnn_kernel_equals_xla_within_bfloat16_tolerance():
    q, k, v, key_mask = _inputs(jnp.bfloat16)
    out = attend(q, k, v, key_mask=key_mask, backend="cudnn")
    want = _reference(q, k, v, key_mask[:, None, None, :])
    np.testing.assert_allclose(np.asarray(out, np.float32), want, atol=2e-2)


def test_a_model_config_with_an_unknown_backend_is_refused():
    from dreamlayer_jax.models.layer_unet import DreamLayerConfig

    with pytest.raises(ConfigError, match="attention_backend='flash'"):
        DreamLayerConfig.from_dict({"attention_backend": "flash"})
