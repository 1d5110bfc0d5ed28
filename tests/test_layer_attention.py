"""CACA and LSSA at the attention level: locality, padding, and a naive reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamlayer_jax.attention.context import LayerContext, make_roles
from dreamlayer_jax.attention.masks import box_masks

B, L, H, W, HEADS, D, T = 1, 4, 8, 8, 2, 4, 3
N = H * W
FULL = (0.0, 0.0, 1.0, 1.0)
FG_BOX = (0.0, 0.0, 0.5, 0.5)  # top-left quadrant of the canvas


def make_ctx(valid=(True, True, False, True), scope="global", margin=0.0):
    layer_valid = jnp.array([valid])
    boxes = jnp.array([[FULL, FG_BOX, (0.5, 0.5, 1.0, 1.0), FULL]], jnp.float32)
    return LayerContext(layer_valid=layer_valid, roles=make_roles(layer_valid), boxes=boxes,
                        text=jnp.zeros((B, L, T, 8)), lssa_scope=scope, box_margin=margin)


def qkv(key, s):
    kq, kk, kv = jax.random.split(key, 3)
    shape = (B * L, s, HEADS, D)
    return (jax.random.normal(kq, (B * L, N, HEADS, D)), jax.random.normal(kk, shape),
            jax.random.normal(kv, shape))


def perturb(x, layer, positions):
    x = x.reshape(B, L, *x.shape[1:])
    x = x.at[:, layer, positions].add(3.0)
    return x.reshape(B * L, *x.shape[2:])


REGION = np.flatnonzero(np.asarray(box_masks(jnp.array(FG_BOX), H, W)))
OUTSIDE = np.setdiff1d(np.arange(N), REGION)


def layer_out(out, layer):
    return np.asarray(out.reshape(B, L, N, HEADS, D)[:, layer])


def test_lssa_foreground_reads_global_tokens_only_inside_its_region():
    ctx = make_ctx()
    self_fn, _ = ctx.attention_fns(H, W)
    q, k, v = qkv(jax.random.key(0), N)
    base = self_fn(q, k, v)
    outside = self_fn(q, perturb(k, L - 1, OUTSIDE), perturb(v, L - 1, OUTSIDE))
    inside = self_fn(q, perturb(k, L - 1, REGION), perturb(v, L - 1, REGION))
    np.testing.assert_allclose(layer_out(outside, 1), layer_out(base, 1), atol=1e-6)
    assert np.abs(layer_out(inside, 1) - layer_out(base, 1)).max() > 1e-3
    # The background reads the global tokens outside the foreground's region.
    assert np.abs(layer_out(outside, 0) - layer_out(base, 0)).max() > 1e-3
    np.testing.assert_allclose(layer_out(inside, 0), layer_out(base, 0), atol=1e-6)


def naive_lssa(q, k, v, visible):
    """Reference: explicit softmax over [own keys; visible global keys] per layer."""
    q, k, v = (np.asarray(x, np.float64).reshape(B, L, -1, HEADS, D) for x in (q, k, v))
    out = np.zeros_like(q)
    for layer in range(L):
        keys = np.concatenate([k[0, layer], k[0, L - 1][visible[layer]]], 0)
        vals = np.concatenate([v[0, layer], v[0, L - 1][visible[layer]]], 0)
        logits = np.einsum("nhd,shd->hns", q[0, layer], keys) / np.sqrt(D)
        p = np.exp(logits - logits.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        out[0, layer] = np.einsum("hns,shd->nhd", p, vals)
    return out


def test_lssa_matches_a_naive_softmax_over_own_and_visible_global_keys():
    ctx = make_ctx()
    self_fn, _ = ctx.attention_fns(H, W)
    q, k, v = qkv(jax.random.key(1), N)
    region = np.zeros(N, bool)
    region[REGION] = True
    visible = [~region, region, np.zeros(N, bool), np.zeros(N, bool)]
    ref = naive_lssa(q, k, v, visible)
    got = np.asarray(self_fn(q, k, v)).reshape(ref.shape)
    for layer in (0, 1, 3):  # layer 2 is padding
        np.testing.assert_allclose(got[0, layer], ref[0, layer], atol=1e-5)


@pytest.mark.parametrize("scope", ["global", "all"])
def test_padded_layers_change_no_valid_output(scope):
    ctx = make_ctx(scope=scope)
    self_fn, cross_fn = ctx.attention_fns(H, W)
    for fn, s in ((self_fn, N), (cross_fn, T)):
        q, k, v = qkv(jax.random.key(2), s)
        base = fn(q, k, v)
        changed = fn(perturb(q, 2, slice(None)), perturb(k, 2, slice(None)),
                     perturb(v, 2, slice(None)))
        for layer in (0, 1, 3):
            np.testing.assert_allclose(layer_out(changed, layer), layer_out(base, layer),
                                       atol=1e-6)


def test_lssa_scope_all_lets_a_layer_read_another_valid_layer():
    ctx = make_ctx(valid=(True, True, True, True), scope="all")
    self_fn, _ = ctx.attention_fns(H, W)
    q, k, v = qkv(jax.random.key(3), N)
    base = self_fn(q, k, v)
    changed = self_fn(q, perturb(k, 2, slice(None)), perturb(v, 2, slice(None)))
    assert np.abs(layer_out(changed, 1) - layer_out(base, 1)).max() > 1e-3
    global_ctx = make_ctx(valid=(True, True, True, True))
    g_fn, _ = global_ctx.attention_fns(H, W)
    np.testing.assert_allclose(layer_out(g_fn(q, perturb(k, 2, slice(None)), v), 1),
                               layer_out(g_fn(q, k, v), 1), atol=1e-6)


def test_caca_global_pixels_read_a_foreground_prompt_only_inside_its_box():
    ctx = make_ctx()
    _, cross_fn = ctx.attention_fns(H, W)
    q, k, v = qkv(jax.random.key(4), T)
    base = layer_out(cross_fn(q, k, v), L - 1)
    changed = layer_out(cross_fn(q, perturb(k, 1, slice(None)), perturb(v, 1, slice(None))),
                        L - 1)
    np.testing.assert_allclose(changed[:, OUTSIDE], base[:, OUTSIDE], atol=1e-6)
    assert np.abs(changed[:, REGION] - base[:, REGION]).max() > 1e-3


def test_caca_global_pixels_read_the_background_prompt_only_outside_the_boxes():
    ctx = make_ctx()
    _, cross_fn = ctx.attention_fns(H, W)
    q, k, v = qkv(jax.random.key(5), T)
    base = layer_out(cross_fn(q, k, v), L - 1)
    changed = layer_out(cross_fn(q, perturb(k, 0, slice(None)), perturb(v, 0, slice(None))),
                        L - 1)
    np.testing.assert_allclose(changed[:, REGION], base[:, REGION], atol=1e-6)
    assert np.abs(changed[:, OUTSIDE] - base[:, OUTSIDE]).max() > 1e-3


def test_caca_layers_read_their_own_prompt_and_the_global_prompt_only():
    ctx = make_ctx()
    _, cross_fn = ctx.attention_fns(H, W)
    q, k, v = qkv(jax.random.key(6), T)
    base = cross_fn(q, k, v)
    other = cross_fn(q, perturb(k, 0, slice(None)), perturb(v, 0, slice(None)))
    np.testing.assert_allclose(layer_out(other, 1), layer_out(base, 1), atol=1e-6)
    glob = cross_fn(q, perturb(k, L - 1, slice(None)), perturb(v, L - 1, slice(None)))
    assert np.abs(layer_out(glob, 1) - layer_out(base, 1)).max() > 1e-3


def test_box_masks_rasterise_pixel_centres_with_a_margin():
    mask = np.asarray(box_masks(jnp.array((0.25, 0.0, 0.5, 0.5)), 4, 4)).reshape(4, 4)
    expected = np.zeros((4, 4), bool)
    expected[:2, 1] = True
    np.testing.assert_array_equal(mask, expected)
    wide = np.asarray(box_masks(jnp.array((0.25, 0.0, 0.5, 0.5)), 4, 4, margin=0.2)).reshape(4, 4)
    assert wide[:3, :3].all() and not wide[3].any()
