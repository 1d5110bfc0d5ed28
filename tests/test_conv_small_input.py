"""`models.resnet.conv2d` on inputs smaller than twice its kernel (SD1.5's lowest levels
at 16x16 latents are 4x4 and 2x2): on the CPU it runs as a matmul over shifted views,
because XLA's CPU compiler swaps such a convolution's operands (forward, or in the
gradient's transposed convolutions) into a far slower form. Same values and gradients
as `lax.conv_general_dilated`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dreamlayer_jax.models.resnet import conv2d


@pytest.mark.parametrize("side,stride", [(2, 1), (2, 2), (1, 1), (4, 1), (4, 2), (6, 1), (7, 2)])
def test_small_input_conv_matches_lax(side, stride):
    graph, state = nnx.split(conv2d(8, 6, 3, stride=stride, rngs=nnx.Rngs(0),
                                    dtype=jnp.float32))
    params = nnx.to_pure_dict(state)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, side, side, 8), np.float32))

    def ours(p, x):
        nnx.replace_by_pure_dict(state, p)
        return nnx.merge(graph, state)(x)

    def reference(p, x):
        return jax.lax.conv_general_dilated(
            x, p["kernel"], (stride, stride), ((1, 1), (1, 1)),
            dimension_numbers=("NHWC", "HWIO", "NHWC")) + p["bias"]

    np.testing.assert_allclose(ours(params, x), reference(params, x), rtol=1e-5, atol=1e-5)
    grads = [jax.grad(lambda p, x, f=f: (f(p, x) ** 2).sum(), argnums=(0, 1))(params, x)
             for f in (ours, reference)]
    for a, b in zip(*(jax.tree.leaves(g) for g in grads), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    ours_hlo = jax.jit(ours).lower(params, x).compile().as_text()
    assert ("convolution(" in ours_hlo) == (side >= 6)  # smaller: the matmul form
