"""The edge-weighted denoising loss (`TrainConfig.edge_loss_weight`): foreground layers'
errors weighted towards their alpha silhouettes, each layer's total weight unchanged."""

import jax.numpy as jnp
import numpy as np
import pytest

from dreamlayer_jax.errors import ConfigError
from dreamlayer_jax.training.losses import alpha_edges, edge_weights, masked_layer_loss


def _square(size: int = 16, lo: int = 4, hi: int = 10) -> np.ndarray:
    a = np.zeros((size, size), np.float32)
    a[lo:hi, lo:hi] = 1.0
    return a


def test_alpha_edges_mark_both_sides_of_a_hard_silhouette_only():
    a = _square()
    edges = np.asarray(alpha_edges(jnp.asarray(a)))
    inside_band = np.zeros_like(a, bool)
    inside_band[3:11, 3:11] = True
    inside_band[5:9, 5:9] = False  # the body's interior is flat
    inside_band[[3, 3, 10, 10], [3, 10, 3, 10]] = False  # diagonal corners have no 4-step
    np.testing.assert_array_equal(edges > 0, inside_band)
    assert edges.max() == 1.0
    half = np.asarray(alpha_edges(jnp.asarray(0.5 * a)))
    np.testing.assert_allclose(half, 0.5 * edges)  # a soft silhouette, a weaker edge


def test_edge_weights_favour_the_silhouette_keep_each_mean_and_spare_other_roles():
    alphas = np.stack([np.ones((16, 16)), _square(), _square(lo=2, hi=14),
                       np.zeros((16, 16))])[None].astype(np.float32)  # [1, 4, 16, 16]
    is_fg = jnp.asarray([[False, True, True, False]])
    w = np.asarray(edge_weights(jnp.asarray(alphas), is_fg, 8, 8, 5.0))
    assert w.shape == (1, 4, 8, 8)
    np.testing.assert_array_equal(w[0, [0, 3]], 1.0)
    np.testing.assert_allclose(w[0, 1:3].mean(axis=(-2, -1)), 1.0, rtol=1e-6)
    assert w[0, 1, 2, 3] > 2 * w[0, 1, 0, 0]  # the edge (latent pixel 2 covers px 4-5)
    empty_fg = np.asarray(edge_weights(jnp.zeros((1, 2, 16, 16)), jnp.asarray([[True, True]]),
                                       8, 8, 5.0))
    np.testing.assert_allclose(empty_fg, 1.0)  # no edge: uniform, not NaN


def test_edge_weighted_loss_counts_an_error_on_the_silhouette_more_than_one_in_the_body():
    alphas = jnp.asarray(_square()[None, None])
    w = edge_weights(alphas, jnp.asarray([[True]]), 8, 8, 5.0)
    target = jnp.zeros((1, 1, 8, 8, 4))
    on_edge = target.at[0, 0, 2, 3].set(1.0)
    in_body = target.at[0, 0, 3, 3].set(1.0)
    valid = jnp.asarray([[True]])
    uniform = [float(masked_layer_loss(p, target, valid)) for p in (on_edge, in_body)]
    weighted = [float(masked_layer_loss(p, target, valid, pixel_weights=w))
                for p in (on_edge, in_body)]
    assert uniform[0] == uniform[1]
    assert weighted[0] > 2 * weighted[1]
    # a NaN in a padded layer stays out, as without pixel weights
    padded = jnp.concatenate([in_body, jnp.full_like(in_body, jnp.nan)], axis=1)
    w2 = jnp.concatenate([w, jnp.ones_like(w)], axis=1)
    got = masked_layer_loss(padded, jnp.zeros_like(padded), jnp.asarray([[True, False]]),
                            pixel_weights=w2)
    assert float(got) == pytest.approx(weighted[1])


def test_a_negative_edge_loss_weight_is_refused(tmp_path):
    from dreamlayer_jax.training.config import TrainConfig

    with pytest.raises(ConfigError, match="edge_loss_weight"):
        TrainConfig(model=str(tmp_path), edge_loss_weight=-1.0)
