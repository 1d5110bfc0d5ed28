"""`timestep_range`: training on a band of noise levels only (a noise-level expert, e.g.
the low-noise steps that leave the built-in model's per-pixel noise); `timestep_focus`:
a share of the scenes' timesteps drawn from a band, the rest from the whole range."""

import jax
import numpy as np
import pytest
from tiny_model import SMALL_UNET, TINY_SCHEDULER, TINY_TEXT, WORDS, small_train_fields

from dreamlayer_jax.errors import ConfigError
from dreamlayer_jax.parallel.mesh import make_mesh
from dreamlayer_jax.pipeline.create import create_model_folder
from dreamlayer_jax.training.config import TrainConfig, config_from_dict
from dreamlayer_jax.training.losses import sample_timesteps
from dreamlayer_jax.training.step import make_loss_fn


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return create_model_folder(
        tmp_path_factory.mktemp("model"), unet=SMALL_UNET, text_encoder=TINY_TEXT,
        words=WORDS, dreamlayer={"max_layers": 4, "codec": "pixel", "pixel_unshuffle": 2,
                                 "resolution": 16},
        scheduler=TINY_SCHEDULER)


def _trainer(model, tmp_path, timestep_range, **fields):
    from dreamlayer_jax.training.loop import Trainer

    cfg = TrainConfig(**small_train_fields(model, timestep_range=timestep_range, **fields))
    return Trainer(cfg, tmp_path / "run", mesh=make_mesh(1, 1, 1, devices=jax.devices()[:1]))


@pytest.mark.parametrize("fields", [{"timestep_range": (7, 8)},
                                    {"timestep_range": (0, 0), "timestep_focus": (7, 8, 1.0)}])
def test_the_loss_draws_its_timesteps_only_from_the_range(model, tmp_path, fields):
    trainer = _trainer(model, tmp_path, **fields)
    pipe = trainer.pipe
    loss_fn = jax.jit(make_loss_fn(trainer.cfg, trainer.model_graph,
                                   pipe.conditioner.graphdefs, pipe.codec, pipe.scheduler,
                                   pipe.config.box_margin))
    batch = trainer.device_batch(next(trainer.make_iterator()))
    params = trainer.initial_state().params
    for seed in range(3):  # every scene of every key at t = 7 (uniform: a mean near 500)
        loss, aux = loss_fn(params, trainer.text_params, batch, jax.random.key(seed))
        assert np.isfinite(float(loss))
        assert float(aux["t_mean"]) == 7.0


@pytest.mark.parametrize("bad", [(5, 5), (9, 3), (-1, 10), (1, 2, 3)])
def test_an_empty_or_malformed_range_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="timestep_range"):
        config_from_dict({"timestep_range": bad})


def test_a_range_past_the_schedulers_timesteps_is_refused_before_training(model, tmp_path):
    with pytest.raises(ConfigError, match="past the scheduler's 1000 timesteps"):
        _trainer(model, tmp_path, (0, 1001))


def test_a_focus_draws_its_share_of_timesteps_from_its_band():
    key = jax.random.key(0)
    uniform = np.asarray(sample_timesteps(key, 20000, (0, 1000)))
    np.testing.assert_array_equal(  # no focus: the plain uniform draw, key for key
        uniform, np.asarray(jax.random.randint(key, (20000,), 0, 1000)))
    focused = np.asarray(sample_timesteps(key, 20000, (0, 1000), (600, 1000, 0.5)))
    assert focused.min() >= 0 and focused.max() < 1000
    # half from [600, 1000), half uniform (0.4 of it in the band): 0.7 in the band
    assert abs(np.mean(focused >= 600) - 0.7) < 0.02
    assert abs(np.mean(uniform >= 600) - 0.4) < 0.02


@pytest.mark.parametrize("bad", [(5, 5, 0.5), (600, 1000, 1.5), (600, 1000, -0.1),
                                 (0, 0, 0.5), (1, 2)])
def test_a_malformed_focus_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="timestep_focus"):
        config_from_dict({"timestep_focus": bad})


def test_a_focus_outside_the_range_is_a_config_error():
    with pytest.raises(ConfigError, match="timestep_focus"):
        config_from_dict({"timestep_range": (0, 500), "timestep_focus": (400, 800, 0.5)})


def test_a_focus_past_the_schedulers_timesteps_is_refused_before_training(model, tmp_path):
    with pytest.raises(ConfigError, match="past the scheduler's 1000 timesteps"):
        _trainer(model, tmp_path, (0, 0), timestep_focus=(900, 1001, 0.5))
