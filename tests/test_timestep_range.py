"""`timestep_range`: training on a band of noise levels only (a noise-level expert, e.g.
the low-noise steps that leave the built-in model's per-pixel noise)."""

import jax
import numpy as np
import pytest
from tiny_model import SMALL_UNET, TINY_SCHEDULER, TINY_TEXT, WORDS, small_train_fields

from dreamlayer_jax.errors import ConfigError
from dreamlayer_jax.parallel.mesh import make_mesh
from dreamlayer_jax.pipeline.create import create_model_folder
from dreamlayer_jax.training.config import TrainConfig, config_from_dict
from dreamlayer_jax.training.step import make_loss_fn


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return create_model_folder(
        tmp_path_factory.mktemp("model"), unet=SMALL_UNET, text_encoder=TINY_TEXT,
        words=WORDS, dreamlayer={"max_layers": 4, "codec": "pixel", "pixel_unshuffle": 2,
                                 "resolution": 16},
        scheduler=TINY_SCHEDULER)


def _trainer(model, tmp_path, timestep_range):
    from dreamlayer_jax.training.loop import Trainer

    cfg = TrainConfig(**small_train_fields(model, timestep_range=timestep_range))
    return Trainer(cfg, tmp_path / "run", mesh=make_mesh(1, 1, 1, devices=jax.devices()[:1]))


def test_the_loss_draws_its_timesteps_only_from_the_range(model, tmp_path):
    trainer = _trainer(model, tmp_path, (7, 8))
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
