"""`models.resnet.upsample_conv`: a 3x3 conv after nearest 2x upsampling, computed as four
2x2 convs on the low-resolution input (2.25x fewer FLOPs). The same function as
upsampling then convolving, in values and in gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dreamlayer_jax.models.resnet import Upsample2D, conv2d, resize_nearest, upsample_conv


@pytest.mark.parametrize("shape", [(2, 3, 5, 4), (1, 1, 1, 4), (1, 8, 8, 4)])
def test_upsample_conv_equals_conv_of_the_upsampled_input(shape):
    conv = conv2d(shape[-1], 6, 3, rngs=nnx.Rngs(0), dtype=jnp.float32)
    graph, state = nnx.split(conv)
    params = nnx.to_pure_dict(state)
    x = jnp.asarray(np.random.default_rng(1).standard_normal(shape, np.float32))

    def ours(p, x):
        nnx.replace_by_pure_dict(state, p)
        return upsample_conv(nnx.merge(graph, state), x)

    def reference(p, x):
        up = resize_nearest(x, (2 * x.shape[1], 2 * x.shape[2]))
        return jax.lax.conv_general_dilated(
            up, p["kernel"], (1, 1), ((1, 1), (1, 1)),
            dimension_numbers=("NHWC", "HWIO", "NHWC")) + p["bias"]

    want = reference(params, x)
    assert ours(params, x).shape == want.shape == (shape[0], 2 * shape[1], 2 * shape[2], 6)
    np.testing.assert_allclose(ours(params, x), want, rtol=1e-5, atol=1e-5)
    grads = [jax.grad(lambda p, x, f=f: (f(p, x) ** 2).sum(), argnums=(0, 1))(params, x)
             for f in (ours, reference)]
    for a, b in zip(*(jax.tree.leaves(g) for g in grads), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_upsample2d_uses_it_for_2x_and_resizes_otherwise():
    up = Upsample2D(4, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(2).standard_normal((1, 4, 4, 4), np.float32))
    plain = up.conv(resize_nearest(x, (8, 8)))
    np.testing.assert_allclose(up(x), plain, rtol=1e-5, atol=1e-5)
    assert up(x, output_size=(7, 9)).shape == (1, 7, 9, 4)  # diffusers' odd sizes
    hlo = jax.jit(lambda x: up(x)).lower(x).as_text()
    assert hlo.count("convolution(") == 4  # the four phases, no upsampled conv
