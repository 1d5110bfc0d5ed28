"""The DreamLayer sampler end to end on a tiny random model: determinism, IRH, outputs."""

import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from dreamlayer_jax.errors import InputError
from dreamlayer_jax.pipeline.irh import IRHSettings, composite_layers
from dreamlayer_jax.pipeline.scene import Layer, Scene

SCENE = Scene(prompt="a small red star and a green ring in front of a striped blue wall",
              background="a striped blue wall",
              layers=[Layer("a small red star", (0.0, 0.0, 0.5, 0.5)),
                      Layer("a green ring", (0.5, 0.5, 1.0, 1.0))])


def test_the_same_seed_gives_identical_layers_and_another_seed_differs(tiny_pipe):
    a = tiny_pipe(SCENE, num_inference_steps=3, seed=1)
    b = tiny_pipe(SCENE, num_inference_steps=3, seed=1)
    c = tiny_pipe(SCENE, num_inference_steps=3, seed=2)
    np.testing.assert_array_equal(a.latents, b.latents)
    assert np.abs(a.latents - c.latents).max() > 1e-3
    assert a.background.shape == (8, 8, 3) and a.composite.shape == (8, 8, 3)
    assert len(a.layers) == 2 and a.layers[0].shape == (8, 8, 4)
    assert a.background.dtype == np.uint8


def test_irh_with_full_retain_pastes_the_layers_into_the_global_latent(tiny_pipe):
    result = tiny_pipe(SCENE, num_inference_steps=4, seed=0, irh_start=0.5, irh_retain=1.0)
    z = jnp.asarray(result.latents)[None]  # [1, L, h, w, c]
    ctx, _ = tiny_pipe.layer_context([SCENE])
    composite, coverage = composite_layers(tiny_pipe.codec.compositor, z, ctx)
    inside = np.asarray(coverage[0, ..., 0]) > 1 - 1e-6
    assert inside.any()
    np.testing.assert_allclose(np.asarray(z[0, -1])[inside], np.asarray(composite[0])[inside],
                               atol=1e-5)
    free = tiny_pipe(SCENE, num_inference_steps=4, seed=0, irh=False)
    assert np.abs(free.latents[-1][inside] - np.asarray(composite[0])[inside]).max() > 1e-3


def test_irh_start_index_counts_from_the_end():
    assert IRHSettings(start=0.3).start_index(10) == 7
    assert IRHSettings(start=1.0).start_index(10) == 1
    assert int(IRHSettings(start=0.3).as_arrays().start_index(10)) == 7


def test_a_scene_with_too_many_foregrounds_is_refused(tiny_pipe):
    crowded = Scene("x", "y", [Layer("a red star")] * (tiny_pipe.max_foregrounds + 1))
    with pytest.raises(InputError, match="supports at most 3"):
        tiny_pipe(crowded, num_inference_steps=2)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"num_inference_steps": 0}, "positive integer"),
    ({"guidance_scale": -1.0}, "guidance_scale"),
])
def test_bad_sampling_arguments_are_input_errors(tiny_pipe, kwargs, message):
    with pytest.raises(InputError, match=message):
        tiny_pipe(SCENE, **kwargs)


def test_a_batch_of_scenes_with_different_layer_counts_matches_single_runs(tiny_pipe):
    small = Scene("a red star in front of a blue wall", "a blue wall",
                  [Layer("a red star", (0.2, 0.2, 0.6, 0.6))])
    batch = tiny_pipe([SCENE, small], num_inference_steps=3, seed=[5, 6])
    alone = tiny_pipe(small, num_inference_steps=3, seed=6)
    assert len(batch[1].layers) == 1
    np.testing.assert_allclose(batch[1].latents, alone.latents, atol=1e-4)


def test_no_recompilation_on_a_second_call(tiny_pipe):
    from dreamlayer_jax.pipeline.layer_sampler import sample_layers

    tiny_pipe(SCENE, num_inference_steps=3, seed=0)
    before = sample_layers._cache_size()
    tiny_pipe(SCENE, num_inference_steps=3, seed=9, guidance_scale=3.0, irh_retain=0.9)
    assert sample_layers._cache_size() == before


def test_a_foreground_is_cleared_outside_its_box_unless_a_clear_margin_lets_it_spill(
        tiny_pipe, tiny_model_dir, tmp_path):
    from dreamlayer_jax.pipeline.dreamlayer import DreamLayerPipeline

    scene = Scene("", "a striped blue wall", [Layer("a red star", (0.25, 0.25, 0.625, 0.625))])
    opaque = tiny_pipe.codec.encode(jnp.ones((3, 8, 8, 4)))[None]  # every slot, every pixel

    def alpha(pipe):
        ctx, _ = pipe.layer_context([scene])
        return pipe.to_results([scene], opaque, ctx, info={})[0].layers[0][..., 3]

    inside = np.zeros((8, 8), np.uint8)
    inside[2:5, 2:5] = 255  # pixels 2-4 of 8: the box exactly
    np.testing.assert_array_equal(alpha(tiny_pipe), inside)
    folder = shutil.copytree(tiny_model_dir, tmp_path / "model")
    config = folder / "dreamlayer" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "clear_margin": 0.125}))
    spilled = alpha(DreamLayerPipeline.from_pretrained(folder))
    assert (spilled[1:6, 1:6] == 255).all() and spilled[0].max() == spilled[:, 6:].max() == 0


@pytest.mark.parametrize("field", ["box_margin", "clear_margin"])
def test_a_margin_outside_zero_to_one_is_a_config_error(field):
    from dreamlayer_jax.errors import ConfigError
    from dreamlayer_jax.models.layer_unet import DreamLayerConfig

    with pytest.raises(ConfigError, match=f"{field}=-0.1"):
        DreamLayerConfig.from_dict({field: -0.1})
