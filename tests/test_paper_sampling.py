"""The paper variant's sampling (DESIGN.md section 8): IRH's two passes and eq. 12, eq. 13
editing, eq. 15 decomposition, and the context-map attention math, against NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamlayer_jax.attention import paper
from dreamlayer_jax.errors import InputError
from dreamlayer_jax.pipeline.decompose import decompose, inversion_layer_mask
from dreamlayer_jax.pipeline.edit import edit, load_saved, transparent_latent
from dreamlayer_jax.pipeline.edit_ops import Flip, Move, ScaleOp, mirror, plan_flip, plan_move
from dreamlayer_jax.pipeline.irh import (
    denoise_keeping,
    irh_window,
    paint_kept,
    reharmonize,
    restart_index,
)
from dreamlayer_jax.pipeline.layer_sampler import sample_layers
from dreamlayer_jax.pipeline.scene import Layer, Scene

STEPS = 4  # DDIM timesteps 751, 501, 251, 1
SCENE = Scene(background="a striped blue wall",
              layers=[Layer("a small red star"), Layer("a green ring")])


def _eq12_numpy(g, kept, alphas, is_fg):
    """Eq. 12 written out: products over the later foregrounds, no recursion."""
    a = alphas * is_fg[:, :, None, None, None]
    num_layers = kept.shape[1]
    out = g * np.prod(1 - a, axis=1)
    for i in range(num_layers):
        later = np.prod(1 - a[:, i + 1:], axis=1) if i + 1 < num_layers else 1.0
        out = out + kept[:, i] * a[:, i] * later
    return out


@pytest.fixture(scope="module")
def pipe(tiny_paper_model_dir):
    from dreamlayer_jax.pipeline.dreamlayer import DreamLayerPipeline

    return DreamLayerPipeline.from_pretrained(tiny_paper_model_dir)


@pytest.fixture(scope="module")
def generated(pipe):
    """Default IRH, then T_H = T_H' (empty window) and IRH off: one compilation."""
    first = pipe(SCENE, num_inference_steps=STEPS, seed=1)
    before = sample_layers._cache_size()
    empty = pipe(SCENE, num_inference_steps=STEPS, seed=1, irh_restart=500, irh_stop=500)
    off = pipe(SCENE, num_inference_steps=STEPS, seed=1, irh=False)
    wide = pipe(SCENE, num_inference_steps=STEPS, seed=1, irh_restart=1000, irh_stop=0)
    return {"default": first, "empty": empty, "off": off, "wide": wide,
            "new_compiles": sample_layers._cache_size() - before}


@pytest.fixture(scope="module")
def saved_dir(generated, tmp_path_factory):
    return generated["default"].save(tmp_path_factory.mktemp("paper_edit") / "scene")


# -- eq. 12, eq. 13, eq. 15 ------------------------------------------------------------
def test_eq12_paints_the_kept_foregrounds_in_slot_order_like_numpy():
    rng = np.random.default_rng(0)
    b, num_layers, h, w, c = 2, 5, 4, 3, 2
    g = rng.normal(size=(b, h, w, c)).astype(np.float32)
    kept = rng.normal(size=(b, num_layers, h, w, c)).astype(np.float32)
    alphas = rng.uniform(size=(b, num_layers, h, w, 1)).astype(np.float32)
    is_fg = np.array([[False, True, True, True, False],
                      [False, True, False, True, False]])  # scene 1: slot 2 padded
    got = np.asarray(paint_kept(jnp.asarray(g), jnp.asarray(kept), jnp.asarray(alphas),
                                jnp.asarray(is_fg)))
    np.testing.assert_allclose(got, _eq12_numpy(g, kept, alphas, is_fg), rtol=1e-5, atol=1e-6)
    # the padded slot contributes nothing, whatever its latent and alpha
    kept2 = kept.copy()
    kept2[1, 2] = 1e3
    again = paint_kept(jnp.asarray(g), jnp.asarray(kept2), jnp.asarray(alphas),
                       jnp.asarray(is_fg))
    np.testing.assert_array_equal(np.asarray(again)[1], got[1])


def test_eq13_an_op_on_the_kept_latents_and_alphas_then_eq12_matches_numpy():
    rng = np.random.default_rng(1)
    levels, num_layers, h, w, c = 3, 4, 6, 6, 2
    kept = rng.normal(size=(levels, num_layers, h, w, c)).astype(np.float32)
    fill = rng.normal(size=(levels, num_layers, h, w, c)).astype(np.float32)
    alphas = rng.uniform(size=(num_layers, h, w, 1)).astype(np.float32)
    move, _ = plan_move(None, 2 / w, -1 / h, h, w, "move 1")  # 2 px right, 1 px up
    flip, _ = plan_flip(None, h, w, "flip 2")  # about the canvas centre
    edited, edited_a = kept.copy(), alphas.copy()
    edited[:, 1], edited_a[1] = move(kept[:, 1], fill[:, 1]), move(alphas[1], 0 * alphas[1])
    edited[:, 2], edited_a[2] = flip(kept[:, 2], fill[:, 2]), flip(alphas[2], 0 * alphas[2])

    ref, ref_a = kept.copy(), alphas.copy()  # NumPy: the same ops by index arithmetic
    ref[:, 1], ref_a[1] = fill[:, 1], 0.0
    ref[:, 1, :h - 1, 2:] = kept[:, 1, 1:, :w - 2]
    ref_a[1, :h - 1, 2:] = alphas[1, 1:, :w - 2]
    ref[:, 2], ref_a[2] = kept[:, 2, :, ::-1], alphas[2, :, ::-1]
    np.testing.assert_array_equal(edited, ref)
    np.testing.assert_array_equal(edited_a, ref_a)

    is_fg = np.array([False, True, True, False])
    g = rng.normal(size=(levels, h, w, c)).astype(np.float32)
    got = paint_kept(jnp.asarray(g), jnp.asarray(edited), jnp.broadcast_to(edited_a, (
        levels, *alphas.shape)), jnp.broadcast_to(is_fg, (levels, num_layers)))
    want = _eq12_numpy(g, ref, np.broadcast_to(ref_a, (levels, *alphas.shape)),
                       np.broadcast_to(is_fg, (levels, num_layers)))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)


def test_eq15_inversion_mask_restricts_only_the_global_row():
    valid = jnp.asarray([[True, True, False, True], [True, True, True, True]])
    mask = np.asarray(inversion_layer_mask(valid))
    assert mask.shape == (2, 4, 4)
    for b in range(2):
        np.testing.assert_array_equal(mask[b, -1], [False, False, False, True])
        for row in range(3):
            np.testing.assert_array_equal(mask[b, row], np.asarray(valid[b]))


# -- the attention math of attention.paper ----------------------------------------------
def test_min_max_normalise_matches_numpy_and_zeroes_constant_maps():
    rng = np.random.default_rng(2)
    maps = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    maps[1, 2] = 0.7
    lo = maps.min(axis=(-2, -1), keepdims=True)
    hi = maps.max(axis=(-2, -1), keepdims=True)
    want = np.where(hi - lo > 1e-6, (maps - lo) / np.where(hi - lo > 1e-6, hi - lo, 1), 0)
    got = np.asarray(paper.min_max_normalise(jnp.asarray(maps)))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert got[1, 2].max() == 0.0 and got[0, 0].min() == 0.0 and got[0, 0].max() == 1.0


def test_cross_attention_with_maps_is_plain_attention_plus_owned_probability_mass():
    rng = np.random.default_rng(3)
    b, num_layers, h, w, t, heads, d = 2, 3, 2, 3, 5, 2, 4
    q = rng.normal(size=(b * num_layers, h * w, heads, d)).astype(np.float32)
    k = rng.normal(size=(b * num_layers, t, heads, d)).astype(np.float32)
    v = rng.normal(size=(b * num_layers, t, heads, d)).astype(np.float32)
    owner = np.array([[-1, 0, 1, 1, -1], [-1, 1, 1, 0, 0]], np.int32)
    own = rng.uniform(size=(b, num_layers, t)) > 0.5
    out, record = paper.cross_attention_with_maps(
        jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), num_layers=num_layers,
        token_owner=jnp.asarray(owner), own_tokens=jnp.asarray(own), h=h, w=w)

    scores = np.einsum("nqhd,nkhd->nhqk", q, k) / np.sqrt(d)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)  # [B*L, H, N, T]
    np.testing.assert_allclose(np.asarray(out), np.einsum("nhqk,nkhd->nqhd", probs, v),
                               rtol=1e-5, atol=1e-5)
    per_pixel = probs.mean(1).reshape(b, num_layers, h * w, t)
    for bi in range(b):
        for layer in range(num_layers):
            glob = per_pixel[bi, -1][:, owner[bi] == layer].sum(-1)
            mine = per_pixel[bi, layer][:, own[bi, layer]].sum(-1)
            np.testing.assert_allclose(np.asarray(record["global_maps"][bi, layer]).ravel(),
                                       glob, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(np.asarray(record["own_maps"][bi, layer]).ravel(),
                                       mine, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(record["global_query"]),
                                  q.reshape(b, num_layers, h, w, heads * d)[:, -1])


def test_context_blend_pulls_only_the_active_scenes_foregrounds_to_the_global_layer():
    rng = np.random.default_rng(4)
    b, num_layers, h, w, c = 2, 4, 3, 3, 2
    x = rng.normal(size=(b * num_layers, h, w, c)).astype(np.float32)
    maps = rng.uniform(size=(b, num_layers, h, w)).astype(np.float32)
    maps[:, 0] = maps[:, -1] = 0.0  # zero on the background and global slots
    np.testing.assert_array_equal(np.asarray(paper.resize_maps(jnp.asarray(maps), h, w)), maps)
    active = np.array([True, False])
    got = np.asarray(paper.context_blend(jnp.asarray(x), jnp.asarray(maps),
                                         jnp.asarray(active))).reshape(b, num_layers, h, w, c)
    x5 = x.reshape(b, num_layers, h, w, c)
    m = maps[0][..., None]
    np.testing.assert_allclose(got[0], x5[0, -1:] * m + x5[0] * (1 - m), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(got[0, [0, -1]], x5[0, [0, -1]])
    np.testing.assert_array_equal(got[1], x5[1])  # inactive scene: unchanged


# -- the restart (pass 2) on a toy model --------------------------------------------------
def _toy_model(x, t, i):
    """Couples the layers (like LSSA) so that pinning them matters."""
    return 0.2 * x + 0.1 * x.mean(axis=1, keepdims=True) + jnp.sin(t / 100.0)


def _toy_setup(pipe, kind="ddim"):
    sched = pipe.with_scheduler(kind)
    plan = sched.set_timesteps(STEPS)
    x = jax.random.normal(jax.random.key(0), (1, 4, 6, 6, 2))
    kept, states = jax.jit(lambda x: denoise_keeping(sched, plan, _toy_model, x))(x)
    return sched, plan, kept, states


def test_restart_index_and_window_in_timestep_units(pipe):
    timesteps = pipe.scheduler.set_timesteps(STEPS).timesteps
    np.testing.assert_array_equal(np.asarray(timesteps), [751, 501, 251, 1])
    assert int(restart_index(timesteps, 600.0)) == 1
    assert int(restart_index(timesteps, 0.0)) == STEPS  # no step at or below T_H
    np.testing.assert_array_equal(np.asarray(irh_window(timesteps, 600.0, 400.0)),
                                  [False, True, False, False])
    assert not np.asarray(irh_window(timesteps, 500.0, 500.0)).any()


@pytest.mark.parametrize("kind", ["ddim", "dpm++2m"])
def test_an_empty_window_re_denoises_the_global_layer_freely(pipe, kind):
    sched, plan, kept, states = _toy_setup(pipe, kind)
    is_fg = jnp.asarray([[False, True, True, False]])
    alphas = jnp.ones((1, 4, 6, 6, 1))
    got = jax.jit(lambda k, s: reharmonize(sched, plan, _toy_model, k, alphas, is_fg, 500.0,
                                           500.0, states=s))(kept, states)
    # reference: from the kept latents at the restart, the other layers pinned, no eq. 12
    first = int(restart_index(plan.timesteps, 500.0))
    x, state = kept[first], jax.tree.map(lambda s: s[first], states)
    for i in range(first, STEPS):
        out = _toy_model(sched.scale_model_input(plan, i, x), plan.timesteps[i], i)
        x, state = sched.step(plan, state, i, out, x)
        x = kept[i + 1].at[:, -1].set(x[:, -1])
    np.testing.assert_allclose(np.asarray(got), np.asarray(x[:, -1]), rtol=1e-5, atol=1e-5)
    # ... which is pass 1's own global latent
    np.testing.assert_allclose(np.asarray(got), np.asarray(kept[-1][:, -1]), atol=1e-5)


def test_a_window_over_every_step_with_hard_alpha_pastes_the_kept_foreground(pipe):
    sched, plan, kept, states = _toy_setup(pipe)
    region = np.zeros((6, 6), bool)
    region[1:4, 2:5] = True
    alphas = np.zeros((1, 4, 6, 6, 1), np.float32)
    alphas[0, 1, region] = 1.0
    alphas[0, 2, 4:, :2] = 0.5
    g, trajectory = jax.jit(lambda k: reharmonize(
        sched, plan, _toy_model, k, jnp.asarray(alphas), jnp.asarray([[False, True, True,
                                                                      False]]),
        1000.0, 0.0, states=states, return_trajectory=True))(kept)
    assert trajectory.shape == (STEPS, *kept.shape[1:])
    for i in range(STEPS):
        np.testing.assert_allclose(np.asarray(trajectory[i, 0, -1])[region],
                                   np.asarray(kept[i + 1, 0, 1])[region], atol=1e-6)
        np.testing.assert_array_equal(trajectory[i, 0, :-1], kept[i + 1, 0, :-1])  # pinned
    assert np.abs(np.asarray(g[0])[~region] - np.asarray(kept[-1, 0, 1])[~region]).max() > 1e-2


# -- the pipeline ------------------------------------------------------------------------
def test_paper_generation_records_its_window_and_irh_changes_only_the_global_layer(
        generated):
    default, empty, off = generated["default"], generated["empty"], generated["off"]
    assert default.info["variant"] == "paper" and default.info["irh"] is True
    assert (default.info["irh_restart"], default.info["irh_stop"]) == (600.0, 400.0)
    assert (empty.info["irh_restart"], empty.info["irh_stop"]) == (500.0, 500.0)
    assert "irh_start" not in default.info
    for result in (empty, generated["wide"], default):
        np.testing.assert_array_equal(result.latents[:-1], off.latents[:-1])
    # T_H = T_H': the second pass re-denoises freely, i.e. it gives pass 1's global
    np.testing.assert_allclose(empty.latents[-1], off.latents[-1], atol=1e-5)
    assert np.abs(generated["wide"].latents[-1] - off.latents[-1]).max() > 1e-3


def test_changing_the_window_or_switching_irh_off_does_not_recompile(generated):
    assert generated["new_compiles"] == 0


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"irh_restart": 300, "irh_stop": 500}, r"irh_stop \(T_H' = 500\) must not exceed"),
    ({"irh_restart": 1200}, r"irh_restart must be a timestep in \[0, 1000\]"),
    ({"irh_stop": -1}, r"irh_stop must be a timestep in \[0, 1000\]"),
])
def test_a_bad_irh_window_is_one_input_error_before_any_work(pipe, kwargs, message):
    before = sample_layers._cache_size()
    with pytest.raises(InputError, match=message):
        pipe(SCENE, num_inference_steps=STEPS, **kwargs)
    assert sample_layers._cache_size() == before


def test_paper_decomposition_returns_every_layer_and_the_global(pipe):
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 2] = 200
    rgb[1:3, 1:3] = (230, 20, 20)
    rgb[5:7, 5:7] = (20, 230, 20)
    result = decompose(pipe, rgb, SCENE.layers, background=SCENE.background,
                       num_inference_steps=STEPS, seed=3)
    assert result.latents.shape == (4, 8, 8, 4) and np.isfinite(result.latents).all()
    assert len(result.layers) == 2 and result.layers[0].shape == (8, 8, 4)
    assert result.background.shape == result.composite.shape == (8, 8, 3)
    assert result.info["mode"] == "decompose" and result.info["variant"] == "paper"
    assert result.info["irh"] is True and result.info["irh_restart"] == 600.0


def test_paper_edit_moves_and_flips_layers_and_keeps_the_others(pipe, saved_dir, generated):
    _, saved, _ = load_saved(pipe, saved_dir)
    transparent = transparent_latent(pipe)
    moved = edit(pipe, saved_dir, [Move(1, 0.25, 0.0)])
    np.testing.assert_array_equal(moved.latents[[0, 2]], saved[[0, 2]])
    expected = np.broadcast_to(transparent, saved[1].shape).copy()
    expected[:, 2:] = saved[1][:, :-2]
    np.testing.assert_array_equal(moved.latents[1], expected)
    assert np.abs(moved.latents[-1] - saved[-1]).max() > 1e-4  # re-harmonized
    assert moved.info["mode"] == "edit" and moved.info["irh_restart"] == 600.0
    assert moved.scene.layers[0].box is None

    from dreamlayer_jax.pipeline.edit import _opaque_centre

    before = sample_layers._cache_size()
    flipped = edit(pipe, saved_dir, [Flip(2)], irh_restart=700, irh_stop=300)
    assert sample_layers._cache_size() == before  # the same re-harmonization program
    np.testing.assert_array_equal(flipped.latents[:2], saved[:2])
    _, cx = _opaque_centre(pipe, saved[2])
    sx = round((2 * cx - 1) * 8)
    np.testing.assert_array_equal(flipped.latents[2], mirror(saved[2], transparent, sx))
    assert flipped.info["irh_stop"] == 300.0


def test_paper_edit_scales_a_layer_about_its_opaque_centre(pipe, saved_dir):
    _, saved, _ = load_saved(pipe, saved_dir)
    scaled = edit(pipe, saved_dir, [ScaleOp(2, 0.5)])
    np.testing.assert_array_equal(scaled.latents[:2], saved[:2])
    assert np.abs(scaled.latents[2] - saved[2]).max() > 1e-3
    assert np.isfinite(scaled.latents).all()


def test_a_latent_codecs_alpha_decoder_takes_its_weights_as_arguments():
    from flax import nnx

    from dreamlayer_jax.codecs.alpha import decode_alphas, split_alpha_decoder
    from dreamlayer_jax.codecs.latent import LatentCodec
    from dreamlayer_jax.codecs.transparency import (
        TransparencyDecoder,
        TransparencyDecoderConfig,
    )
    from dreamlayer_jax.models.vae import AutoencoderKL, VAEConfig

    def codec(seed):
        vae = AutoencoderKL(VAEConfig(block_out_channels=(8, 16), norm_num_groups=4,
                                      down_block_types=("DownEncoderBlock2D",) * 2,
                                      up_block_types=("UpDecoderBlock2D",) * 2),
                            rngs=nnx.Rngs(seed))
        decoder = TransparencyDecoder(TransparencyDecoderConfig(
            downsample=2, hidden_channels=8, norm_num_groups=4), rngs=nnx.Rngs(seed + 1))
        return LatentCodec(vae, decoder)

    z = jax.random.normal(jax.random.key(0), (2, 4, 4, 4))
    first, second = codec(0), codec(5)
    got = decode_alphas(*split_alpha_decoder(first), z)
    decoded = np.asarray(jax.jit(first.decode)(z))[..., 3:]  # [2, 8, 8, 1]: 2x2 blocks
    want = decoded.reshape(2, 4, 2, 4, 2, 1).mean(axis=(2, 4))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
    compiled = decode_alphas._cache_size()
    other = decode_alphas(*split_alpha_decoder(second), z)  # other weights, same program
    assert decode_alphas._cache_size() == compiled
    assert np.abs(np.asarray(other) - np.asarray(got)).max() > 1e-4
    opaque = decode_alphas(*split_alpha_decoder(LatentCodec(first.vae)), z)
    np.testing.assert_array_equal(np.asarray(opaque), 1.0)
