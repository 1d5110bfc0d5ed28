"""`guidance_min_timestep`: classifier-free guidance only at the high-noise steps.

(The built-in model's guided low-noise steps add per-pixel noise: benchmarks/denoiser_noise.py.)
"""

import numpy as np
import pytest

from dreamlayer_jax.errors import ConfigError, InputError
from dreamlayer_jax.models.layer_unet import DreamLayerConfig
from dreamlayer_jax.pipeline.scene import Layer, Scene

SCENE = Scene(prompt="a small red star in front of a striped blue wall",
              background="a striped blue wall",
              layers=[Layer("a small red star", (0.0, 0.0, 0.6, 0.6))])


def _latents(pipe, **kwargs):
    return pipe(SCENE, num_inference_steps=3, seed=0, **kwargs).latents


def test_guidance_applies_only_at_timesteps_at_or_above_the_floor(tiny_pipe):
    timesteps = np.asarray(tiny_pipe.scheduler.set_timesteps(3).timesteps)
    guided = _latents(tiny_pipe, guidance_scale=5.0)
    unguided = _latents(tiny_pipe, guidance_scale=1.0)
    assert np.abs(guided - unguided).max() > 1e-4  # guidance changes the result
    # a floor above every timestep: no step is guided, as guidance 1
    np.testing.assert_array_equal(
        _latents(tiny_pipe, guidance_scale=5.0,
                 guidance_min_timestep=float(timesteps.max()) + 1), unguided)
    # a floor at the lowest timestep: every step is guided, as no floor
    np.testing.assert_array_equal(
        _latents(tiny_pipe, guidance_scale=5.0, guidance_min_timestep=float(timesteps.min())),
        guided)
    # between: the first step guided, the others not -- neither of the two
    partly = tiny_pipe(SCENE, num_inference_steps=3, seed=0, guidance_scale=5.0,
                       guidance_min_timestep=float(timesteps[0]))
    assert np.abs(partly.latents - guided).max() > 1e-5
    assert np.abs(partly.latents - unguided).max() > 1e-5
    assert partly.info["guidance_min_timestep"] == float(timesteps[0])


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_a_negative_or_non_finite_floor_is_refused(tiny_pipe, bad):
    with pytest.raises(InputError, match="guidance_min_timestep"):
        tiny_pipe(SCENE, num_inference_steps=2, guidance_min_timestep=bad)


def test_the_models_config_carries_its_default_floor():
    assert DreamLayerConfig().guidance_min_timestep == 0.0
    assert DreamLayerConfig.from_dict({"guidance_min_timestep": 400}).guidance_min_timestep == 400
    with pytest.raises(ConfigError, match="guidance_min_timestep"):
        DreamLayerConfig.from_dict({"guidance_min_timestep": -5})
