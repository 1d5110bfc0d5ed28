"""Image-to-layer decomposition and latent-space editing on the tiny random model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamlayer_jax.errors import InputError, OutputError
from dreamlayer_jax.pipeline.decompose import (
    background_keep,
    decompose,
    encode_image,
    invert_trajectory,
    load_image,
)
from dreamlayer_jax.pipeline.edit import edit, transparent_latent
from dreamlayer_jax.pipeline.edit_ops import (
    Delete,
    Move,
    Reorder,
    Reprompt,
    ScaleOp,
    parse_edit_ops,
)
from dreamlayer_jax.pipeline.scene import Layer
from dreamlayer_jax.schedulers.loop import sample_loop

STEPS = 4
LAYERS = [Layer("a small red star", (0.0, 0.0, 0.5, 0.5)),
          Layer("a green ring", (0.5, 0.5, 1.0, 1.0))]
PROMPT = "a small red star and a green ring in front of a striped blue wall"


def _picture() -> np.ndarray:
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 2] = 200  # blue wall
    rgb[1:3, 1:3] = (230, 20, 20)  # red star
    rgb[5:7, 5:7] = (20, 230, 20)  # green ring
    return rgb


@pytest.fixture(scope="module")
def decomposed(tiny_pipe):
    return decompose(tiny_pipe, _picture(), LAYERS, background="a striped blue wall",
                     prompt=PROMPT, num_inference_steps=STEPS, seed=3)


@pytest.fixture(scope="module")
def saved_dir(decomposed, tmp_path_factory):
    return decomposed.save(tmp_path_factory.mktemp("edit") / "scene")


@pytest.fixture(scope="module")
def moved(tiny_pipe, saved_dir):
    return edit(tiny_pipe, saved_dir, [Move(1, 0.25, 0.125)])


def test_decompose_returns_layers_with_the_global_latent_equal_to_the_pictures_encoding(
        tiny_pipe, decomposed):
    assert decomposed.latents.shape == (4, 8, 8, 4)
    assert decomposed.background.shape == (8, 8, 3) and len(decomposed.layers) == 2
    assert decomposed.layers[0].shape == (8, 8, 4)
    expected = np.asarray(encode_image(tiny_pipe, load_image(_picture(), 8)))[0]
    np.testing.assert_array_equal(decomposed.latents[-1], expected)
    np.testing.assert_array_equal(decomposed.composite, _picture())
    assert decomposed.info["mode"] == "decompose" and decomposed.info["irh"] is False


def test_the_background_outside_every_box_is_the_picture_and_generated_inside(
        tiny_pipe, decomposed):
    # boxes dilated by the margin (0.05) and one cell (1/8): the top-right and the
    # bottom-left 3x3 cells lie outside both
    outside = np.zeros((8, 8), bool)
    outside[:3, 5:] = outside[5:, :3] = True
    ctx, _ = tiny_pipe.layer_context([decomposed.scene])
    keep = np.asarray(background_keep(ctx, 8, 8))[0, ..., 0]  # [L, h, w]
    np.testing.assert_array_equal(keep[0], outside)
    assert keep[-1].all() and not keep[1:-1].any()
    only_global = np.asarray(background_keep(ctx, 8, 8, background=False))[0, ..., 0]
    assert only_global[-1].all() and not only_global[:-1].any()
    np.testing.assert_array_equal(decomposed.latents[0][outside], decomposed.latents[-1][outside])
    np.testing.assert_array_equal(decomposed.background[outside], _picture()[outside])
    assert decomposed.info["keep_background"] is True and decomposed.info["eta"] == 1.0
    free = decompose(tiny_pipe, _picture(), LAYERS, background="a striped blue wall",
                     prompt=PROMPT, num_inference_steps=STEPS, seed=3, keep_background=False)
    assert not np.array_equal(free.latents[0][outside], decomposed.latents[-1][outside])
    assert free.info["keep_background"] is False
    with pytest.raises(InputError, match="eta"):
        decompose(tiny_pipe, _picture(), LAYERS, background="a wall", eta=-1.0)


def _reconstruction_error(sched, steps, lipschitz):
    """DDIM-invert a random latent with a toy model, sample it back, return the max error."""
    plan = sched.set_timesteps(steps)
    rng = np.random.default_rng(0)
    x0 = jnp.asarray(rng.uniform(-1, 1, (1, 8, 8, 4)), jnp.float32)
    mix = jnp.asarray(rng.normal(size=(4, 4)) / 2, jnp.float32)

    def model_fn(x, t, i):
        return jnp.tanh(lipschitz * x @ mix) + jnp.sin(t / 100.0)

    levels = jax.jit(lambda x: invert_trajectory(sched, plan, model_fn, x))(x0)
    assert levels.shape == (steps + 1, 1, 8, 8, 4)
    np.testing.assert_array_equal(levels[-1], x0)
    assert np.abs(np.asarray(levels[0] - x0)).max() > 0.5  # x_T is far from x0
    rebuilt = jax.jit(lambda x: sample_loop(sched, plan, model_fn, x))(levels[0])
    return float(np.abs(np.asarray(rebuilt - x0)).max())


def test_ddim_inversion_then_deterministic_ddim_sampling_reconstructs_the_latent(tiny_pipe):
    sched = tiny_pipe.with_scheduler("ddim")
    # A model output that does not depend on x: inversion is exact (float32 round-off).
    assert _reconstruction_error(sched, 10, 0.0) < 1e-4
    # A smooth x-dependent model: DDIM inversion's first-order error, shrinking ~1 / steps.
    coarse, fine = _reconstruction_error(sched, 20, 0.5), _reconstruction_error(sched, 100, 0.5)
    assert fine < 0.25 and fine < 0.4 * coarse


def test_moving_a_layer_shifts_its_latent_by_whole_pixels_and_keeps_the_others_exact(
        tiny_pipe, decomposed, moved):
    transparent = transparent_latent(tiny_pipe)
    np.testing.assert_array_equal(transparent, -np.ones((8, 8, 4), np.float32))
    expected = np.full_like(decomposed.latents[1], -1.0)
    expected[1:, 2:] = decomposed.latents[1][:-1, :-2]  # dx 0.25 -> 2 px, dy 0.125 -> 1 px
    np.testing.assert_array_equal(moved.latents[1], expected)
    np.testing.assert_array_equal(moved.latents[0], decomposed.latents[0])
    np.testing.assert_array_equal(moved.latents[2], decomposed.latents[2])
    assert moved.scene.layers[0].box == (0.25, 0.125, 0.75, 0.625)
    assert moved.scene.layers[1] == decomposed.scene.layers[1]


def test_the_edited_global_layer_is_harmonized_not_pasted(tiny_pipe, decomposed, moved):
    from dreamlayer_jax.pipeline.irh import composite_layers

    z = jnp.asarray(moved.latents)[None]
    ctx, _ = tiny_pipe.layer_context([moved.scene])
    paste, coverage = composite_layers(tiny_pipe.codec.compositor, z, ctx)
    diff = np.abs(moved.latents[-1] - np.asarray(paste[0])).mean(-1)
    inside = np.asarray(coverage[0, ..., 0]) > 0.5
    # irh_retain 0.5 < 1: the global layer is not a hard paste of the edited layers ...
    assert moved.info["irh_retain"] == 0.5 and diff.max() > 1e-2
    # ... but it is pulled toward them where they are opaque, so it departs from the paste
    # less inside the foregrounds' coverage than outside it.
    assert diff[inside].mean() < diff[~inside].mean()


def test_reprompting_regenerates_only_that_layer_and_saves_an_editable_scene(
        tiny_pipe, decomposed, saved_dir, tmp_path):
    from dreamlayer_jax.pipeline.edit import load_saved

    result = edit(tiny_pipe, saved_dir, [Reprompt(2, "a yellow moon")], out=tmp_path / "e")
    assert result.scene.layers[1].prompt == "a yellow moon"
    np.testing.assert_array_equal(result.latents[:2], decomposed.latents[:2])
    assert np.abs(result.latents[2] - decomposed.latents[2]).max() > 1e-2
    scene, latents, info = load_saved(tiny_pipe, tmp_path / "e")
    assert scene == result.scene and info["steps"] == STEPS and info["seed"] == 3
    assert info["mode"] == "edit"
    np.testing.assert_array_equal(latents, result.latents)


def test_delete_reorder_and_scale_rebuild_the_layer_stack(tiny_pipe, decomposed, saved_dir):
    from dreamlayer_jax.pipeline.edit import apply_ops, load_saved

    scene, latents, _ = load_saved(tiny_pipe, saved_dir)
    np.testing.assert_array_equal(latents, decomposed.latents)
    new, z, regen = apply_ops(tiny_pipe, scene, latents, [Reorder((2, 1))])
    assert [l.prompt for l in new.layers] == ["a green ring", "a small red star"]
    np.testing.assert_array_equal(z[1], latents[2])
    new, z, _ = apply_ops(tiny_pipe, scene, latents, [Delete(1)])
    assert len(new.layers) == 1 and z.shape == (3, 8, 8, 4)
    np.testing.assert_array_equal(z[1], latents[2])
    new, z, _ = apply_ops(tiny_pipe, scene, latents, [ScaleOp(2, 0.5)])
    assert new.layers[1].box == (0.625, 0.625, 0.875, 0.875)
    assert z[2][:2].max() == -1.0  # far from the shrunk box: transparent
    new, z, _ = apply_ops(tiny_pipe, scene, latents, [ScaleOp(1, 1.0)])
    np.testing.assert_allclose(z[1], latents[1], atol=1e-6)
    assert regen == [False, False]


@pytest.mark.parametrize(("ops", "message"), [
    ([Move(3, 0.1, 0.0)], "layer 3 does not exist"),
    ([Move(2, 0.25, 0.0)], "leave the canvas"),
    ([ScaleOp(1, 1.5)], "leave the canvas"),
    ([Delete(1), Move(1, 0.1, 0.1)], "deleted"),
    ([Reorder((1, 1))], "exactly once"),
])
def test_bad_edit_ops_are_input_errors_and_write_nothing(tiny_pipe, saved_dir, tmp_path,
                                                         ops, message):
    out = tmp_path / "edited"
    with pytest.raises(InputError, match=message):
        edit(tiny_pipe, saved_dir, ops, out=out)
    assert not out.exists()


def test_a_missing_or_corrupt_saved_folder_is_an_input_error(tiny_pipe, saved_dir, tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        edit(tiny_pipe, tmp_path / "nowhere", [Delete(1)])
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "scene.json").write_text((saved_dir / "scene.json").read_text())
    (broken / "latents.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match="corrupt"):
        edit(tiny_pipe, broken, [Delete(1)])
    (broken / "latents.safetensors").unlink()
    with pytest.raises(InputError, match="no latents"):
        edit(tiny_pipe, broken, [Delete(1)])
    with pytest.raises(OutputError, match="not empty"):
        edit(tiny_pipe, saved_dir, [Delete(1)], out=saved_dir)


def test_parse_edit_ops_reads_the_cli_strings():
    ops = parse_edit_ops(move=["1:+0.1,-0.05"], scale=["2:1.2"], delete=["3"],
                         reprompt=["1:a green star"], order="2,1")
    assert ops == [Reprompt(1, "a green star"), Move(1, 0.1, -0.05), ScaleOp(2, 1.2),
                   Delete(3), Reorder((2, 1))]
    for bad in ({"move": ["1:0.1"]}, {"scale": ["x:2"]}, {"delete": ["0"]},
                {"reprompt": ["2: "]}, {"move": ["1:nan,0"]}):
        with pytest.raises(InputError):
            parse_edit_ops(**bad)


def test_a_picture_of_another_size_or_mode_is_converted_with_a_warning(tmp_path):
    from PIL import Image

    path = tmp_path / "p.png"
    Image.fromarray(np.zeros((16, 12), np.uint8), mode="L").save(path)
    with pytest.warns(UserWarning, match="resized"):
        pixels = load_image(path, 8)
    assert pixels.shape == (8, 8, 3)
    rgba = np.full((8, 8, 4), 255, np.uint8)
    rgba[..., 3] = 0
    assert load_image(rgba, 8).max() == 0.0  # flattened over black
    with pytest.raises(InputError, match="does not exist"):
        load_image(tmp_path / "missing.png", 8)
    with pytest.raises(InputError, match="uint8"):
        load_image(np.zeros((8, 8, 3), np.float32), 8)


def test_a_16_bit_grey_png_path_keeps_its_grey_levels(tmp_path):
    from PIL import Image

    wide = np.full((8, 8), 128 * 257, np.uint16)  # mid grey in 16 bits
    path = tmp_path / "grey16.png"
    Image.fromarray(wide).save(path)
    assert Image.open(path).mode.startswith("I")
    np.testing.assert_allclose(load_image(path, 8), 128 / 255, atol=1e-6)
