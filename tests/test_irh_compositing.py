"""IRH's latent composite of noisy samples (`pipeline.irh.composite_layers` with a signal
scale) against the exact one of clean latents, on the pixel codec."""

import jax
import jax.numpy as jnp
import numpy as np

from dreamlayer_jax.attention.context import LayerContext, make_roles
from dreamlayer_jax.codecs.pixel import PixelCodec
from dreamlayer_jax.pipeline.irh import (
    IRHSettings,
    composite_layers,
    foreground_gates,
    harmonize,
    paint_weights,
    share_noise,
)

CODEC = PixelCodec(2)
SIZE = 16  # pixels; latents 8 x 8 x 16


def _context() -> LayerContext:
    """Background, one foreground boxed in the top-left quarter, global."""
    valid = jnp.ones((1, 3), bool)
    boxes = jnp.array([[[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 1.0, 1.0]]])
    return LayerContext(layer_valid=valid, roles=make_roles(valid), boxes=boxes,
                        text=jnp.zeros((1, 3, 4, 8)), box_margin=0.0)


def _clean_latents() -> jax.Array:
    """`[1, 3, 8, 8, 16]`: a bright opaque background, an opaque square in the foreground's
    box (pixels 3-6: latent cell 2 whole, cells 1 and 3 in part), a global layer."""
    background = jnp.concatenate([jnp.full((SIZE, SIZE, 3), 0.95), jnp.ones((SIZE, SIZE, 1))],
                                 -1)
    square = jnp.zeros((SIZE, SIZE, 4)).at[3:7, 3:7].set(jnp.array([0.2, 0.4, 0.9, 1.0]))
    layers = jnp.stack([background, square, background * 0.5 + 0.25])
    return CODEC.encode(layers)[None]


def test_the_blend_leaves_a_noisy_background_untouched_outside_the_boxes():
    """A noisy sample's values beyond [-1, 1] pass through where no foreground paints (the
    exact "over" clips them: it darkened IRH's global layer)."""
    ctx, scale = _context(), 0.75
    noisy = scale * _clean_latents() + 0.7 * jax.random.normal(jax.random.key(0),
                                                               (1, 3, 8, 8, 16))
    blend, _ = composite_layers(CODEC, noisy, ctx, scale)
    outside = np.ones((8, 8), bool)
    outside[:4, :4] = False  # the foreground's box, in latent cells
    np.testing.assert_array_equal(np.asarray(blend[0])[outside],
                                  np.asarray(noisy[0, 0])[outside])
    exact, _ = composite_layers(CODEC, noisy, ctx)
    assert np.abs(np.asarray(exact[0] - noisy[0, 0])[outside]).max() > 0.5


def test_the_estimated_opacity_of_a_noisy_sample_is_the_clean_one_on_average():
    ctx, scale = _context(), 0.75
    clean = _clean_latents()
    noise = jax.random.normal(jax.random.key(1), (256, *clean.shape[1:]))
    _, truth = composite_layers(CODEC, clean, ctx)
    _, estimates = composite_layers(CODEC, scale * clean + 0.3 * noise, ctx, scale)
    mean = np.asarray(estimates).mean(0)[..., 0]
    np.testing.assert_allclose(mean[1, 2], 0.5, atol=0.02)  # half the cell: unbiased
    # at 0 and 1 the clip to [0, 1] biases the estimate inward by a few hundredths
    assert mean[2, 2] > 0.9 and mean[4:, 4:].max() < 0.1
    np.testing.assert_array_equal(np.asarray(truth[0, 1:4, 2, 0]), [0.5, 1.0, 0.5])


def test_a_clean_blend_of_opaque_cells_matches_the_exact_composite():
    ctx, clean = _context(), _clean_latents()
    exact, coverage = composite_layers(CODEC, clean, ctx)
    blend, _ = composite_layers(CODEC, clean, ctx, 1.0)
    opaque_or_clear = np.isin(np.asarray(coverage[0, ..., 0]), (0.0, 1.0))
    np.testing.assert_allclose(np.asarray(blend[0])[opaque_or_clear],
                               np.asarray(exact[0])[opaque_or_clear], atol=1e-6)


def test_harmonize_pastes_the_exact_composite_after_the_last_step_only():
    ctx, clean = _context(), _clean_latents()
    settings = IRHSettings(start=0.5, retain=1.0)
    exact, coverage = composite_layers(CODEC, clean, ctx)
    blend, _ = composite_layers(CODEC, clean, ctx, 1.0)
    assert np.abs(np.asarray(exact - blend)).max() > 1e-3  # the square's soft cells
    last = harmonize(settings, CODEC, clean, ctx, jnp.int32(4), 4, 1.0)
    before = harmonize(settings, CODEC, clean, ctx, jnp.int32(3), 4, 1.0)
    inside = np.asarray(coverage[0]) > 0
    np.testing.assert_allclose(np.asarray(last[0, -1]), np.asarray(
        clean[0, -1] + coverage[0] * (exact[0] - clean[0, -1])), atol=1e-6)
    assert not np.allclose(np.asarray(before[0, -1])[inside[..., 0]],
                           np.asarray(last[0, -1])[inside[..., 0]])


def _two_foregrounds() -> tuple[LayerContext, jax.Array]:
    """Background, two overlapping boxed foregrounds, global; a noisy sample at scale 0.8."""
    valid = jnp.ones((1, 4), bool)
    boxes = jnp.array([[[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.5, 0.5], [0.25, 0.25, 0.75, 0.75],
                        [0.0, 0.0, 1.0, 1.0]]])
    ctx = LayerContext(layer_valid=valid, roles=make_roles(valid), boxes=boxes,
                       text=jnp.zeros((1, 4, 4, 8)), box_margin=0.0)
    clean = CODEC.encode(jax.random.uniform(jax.random.key(2), (4, SIZE, SIZE, 4)))[None]
    return ctx, 0.8 * clean + 0.5 * jax.random.normal(jax.random.key(3), clean.shape)


def test_paint_weights_sum_to_one_and_give_the_layer_by_layer_blend():
    ctx, noisy = _two_foregrounds()
    weights = paint_weights(CODEC, noisy, ctx, 0.8)
    np.testing.assert_allclose(np.asarray(weights.sum(1)), 1.0, atol=1e-6)
    assert float(jnp.abs(weights[:, -1]).max()) == 0.0  # the global slot paints nothing
    gates = foreground_gates(ctx, 8, 8)
    blend = noisy[:, 0]
    for layer in (1, 2):  # paint order: slot order
        a = gates[:, layer] * CODEC.latent_alpha(noisy[:, layer], 0.8)
        blend = blend + a * (noisy[:, layer] - blend)
    composite, coverage = composite_layers(CODEC, noisy, ctx, 0.8)
    np.testing.assert_allclose(np.asarray(composite), np.asarray(blend), atol=1e-5)
    np.testing.assert_allclose(np.asarray(coverage), np.asarray(1.0 - weights[:, 0]), atol=1e-6)


def test_shared_noise_is_the_backgrounds_where_no_foreground_shows_from_irh_start_on():
    ctx, noisy = _two_foregrounds()
    settings = IRHSettings(start=0.5)  # of 4 steps: shared from step 2 on
    noise = jax.random.normal(jax.random.key(4), noisy.shape)
    before = share_noise(settings, CODEC, noisy, noise, ctx, jnp.int32(1), 4, 0.8)
    np.testing.assert_array_equal(np.asarray(before), np.asarray(noise))
    off = share_noise(settings.replace(enabled=False), CODEC, noisy, noise, ctx,
                      jnp.int32(2), 4, 0.8)
    np.testing.assert_array_equal(np.asarray(off), np.asarray(noise))
    shared = share_noise(settings, CODEC, noisy, noise, ctx, jnp.int32(2), 4, 0.8)
    np.testing.assert_array_equal(np.asarray(shared[:, :-1]), np.asarray(noise[:, :-1]))
    outside = np.ones((8, 8), bool)
    outside[:6, :6] = False  # the union of the two boxes, in latent cells
    np.testing.assert_allclose(np.asarray(shared[0, -1])[outside],
                               np.asarray(noise[0, 0])[outside], atol=1e-6)
    assert np.abs(np.asarray(shared[0, -1] - noise[0, -1])[~outside]).max() > 0.1


def test_shared_noise_keeps_a_unit_variance_at_every_cell():
    ctx, noisy = _two_foregrounds()
    keys = jax.random.split(jax.random.key(5), 4096)
    draw = jax.vmap(lambda k: share_noise(
        IRHSettings(start=0.5), CODEC, noisy, jax.random.normal(k, noisy.shape), ctx,
        jnp.int32(3), 4, 0.8)[0, -1])(keys)  # [4096, h, w, c]
    np.testing.assert_allclose(np.asarray(draw.var(0)), 1.0, atol=0.12)
    np.testing.assert_allclose(np.asarray(draw.mean(0)), 0.0, atol=0.12)


def test_irh_gates_the_layers_where_the_output_may_be_opaque_not_by_the_attention_margin():
    """The global layer composites the layers as the pipeline outputs them: cleared
    outside the box dilated by `clear_margin`, whatever `box_margin` the attention uses."""
    exact = _context().replace(box_margin=0.25)
    gates = np.asarray(foreground_gates(exact, 8, 8))[0, :, :, :, 0]
    inside = np.zeros((8, 8))
    inside[:4, :4] = 1.0  # the top-left quarter, in latent cells
    np.testing.assert_array_equal(gates[1], inside)
    assert gates[0].max() == gates[2].max() == 0.0  # background and global: no gate
    spill = np.asarray(foreground_gates(exact.replace(clear_margin=0.25), 8, 8))[0, 1, :, :, 0]
    np.testing.assert_array_equal(spill[:6, :6], 1.0)
    assert spill[6:].max() == spill[:, 6:].max() == 0.0
