"""Cached-latent training (training.latent_cache, data.latent_cache): the same seeds
give the same losses from raw scenes and from the cache (box variant with flips, prompt
dropout and edge-weighted loss, paper variant with its context losses); caches of another model or
layer count, and what the cached path cannot do, are refused; a failed write leaves
nothing. Four compiled train steps in all (raw and cached, per variant)."""

from pathlib import Path

import jax
import numpy as np
import pytest
from tiny_model import (
    SMALL_UNET,
    TINY_SCHEDULER,
    TINY_TEXT,
    WORDS,
    small_train_fields,
    write_small_train_model,
)

from dreamlayer_jax.data.latent_cache import CacheSource, write_cache
from dreamlayer_jax.errors import ConfigError, DreamLayerError
from dreamlayer_jax.parallel.mesh import make_mesh
from dreamlayer_jax.pipeline.create import create_model_folder
from dreamlayer_jax.training.config import TrainConfig
from dreamlayer_jax.training.latent_cache import cache_latents

PAPER = {"max_layers": 4, "codec": "pixel", "pixel_unshuffle": 2, "resolution": 16,
         "variant": "paper", "context_width": 16, "context_heads": 2, "context_layers": 1}
STEPS = 3


def _fields(model: Path, **overrides) -> dict:
    return small_train_fields(model, num_steps=STEPS, checkpoint_every=100, export=False,
                              async_checkpoints=False, log_every=100, **overrides)


def _losses(cfg: TrainConfig, workdir: Path) -> np.ndarray:
    from dreamlayer_jax.training.loop import Trainer

    trainer = Trainer(cfg, workdir, mesh=make_mesh(1, 1, 1, devices=jax.devices()[:1]))
    return np.array([loss for _, loss in trainer.run()])


def _raw_and_cached(tmp_path: Path, model: Path, **overrides) -> tuple[np.ndarray, np.ndarray]:
    raw = TrainConfig(**_fields(model, **overrides))
    cache_latents(raw, tmp_path / "cache", chunk=3)
    cached = TrainConfig(**_fields(model, data_cache=str(tmp_path / "cache"), **overrides))
    return _losses(raw, tmp_path / "raw"), _losses(cached, tmp_path / "cached")


@pytest.fixture(scope="module")
def box_model(tmp_path_factory) -> Path:
    return write_small_train_model(tmp_path_factory.mktemp("box") / "model")


def test_box_variant_same_losses_from_cache_with_flips_dropout_and_edge_weights(
        box_model, tmp_path):
    # the edge weights read the alphas, which the cache must flip with the latents
    raw, cached = _raw_and_cached(tmp_path, box_model, flip_prob=0.5, prompt_dropout=0.3,
                                  edge_loss_weight=5.0)
    source = CacheSource(tmp_path / "cache")
    assert len(source) == 8 and source[0]["latents"].shape == (4, 8, 8, 16)
    assert source[0]["alphas"].shape == (4, 16, 16)
    assert source[0]["text"].shape[0] == 4 and source.empty["text"].ndim == 2
    from dreamlayer_jax.training.sources import eval_scenes, synthetic_source

    raw_source = synthetic_source(TrainConfig(**_fields(box_model)), 4)  # sample grids' scenes
    assert eval_scenes(source, 4, 3) == eval_scenes(raw_source, 4, 3)
    np.testing.assert_allclose(cached, raw, rtol=1e-5, atol=1e-6)


def test_paper_variant_same_losses_from_cache(tmp_path):
    model = create_model_folder(tmp_path / "model", unet=SMALL_UNET, text_encoder=TINY_TEXT,
                                words=WORDS, dreamlayer=PAPER, scheduler=TINY_SCHEDULER)
    raw, cached = _raw_and_cached(tmp_path, model, train_params="kv", flip_prob=0.5,
                                  prompt_dropout=0.0)
    assert {"token_ids", "alphas"} <= set(CacheSource(tmp_path / "cache")[0])
    np.testing.assert_allclose(cached, raw, rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="prompt_dropout=0"):  # needs the text encoder
        _losses(TrainConfig(**_fields(model, data_cache=str(tmp_path / "cache"),
                                      prompt_dropout=0.1)), tmp_path / "dropout")


def test_cache_of_another_model_or_layer_count_is_refused(box_model, tmp_path):
    cache_latents(TrainConfig(**_fields(box_model, synthetic_scenes=4)), tmp_path / "cache")
    other = create_model_folder(tmp_path / "other", unet=SMALL_UNET, text_encoder=TINY_TEXT,
                                words=WORDS, scheduler=TINY_SCHEDULER, seed=1,
                                dreamlayer={"max_layers": 4, "codec": "pixel",
                                            "pixel_unshuffle": 2, "resolution": 16})
    cache = str(tmp_path / "cache")
    with pytest.raises(ConfigError, match="text encoder weights"):
        _losses(TrainConfig(**_fields(other, data_cache=cache)), tmp_path / "a")
    with pytest.raises(ConfigError, match="max_layers"):
        _losses(TrainConfig(**_fields(box_model, data_cache=cache, max_layers=3)),
                tmp_path / "b")
    with pytest.raises(ConfigError, match="not both"):
        _losses(TrainConfig(**_fields(box_model, data_cache=cache, data_dir=cache)),
                tmp_path / "c")
    assert "alphas" not in CacheSource(cache)[0]  # only the edge weights need them
    with pytest.raises(ConfigError, match="edge_loss_weight needs"):
        _losses(TrainConfig(**_fields(box_model, data_cache=cache, edge_loss_weight=1.0)),
                tmp_path / "d")
    with pytest.raises(ConfigError, match="not empty"):  # never written over
        cache_latents(TrainConfig(**_fields(box_model)), tmp_path / "cache")


def test_failed_write_leaves_nothing(tmp_path):
    def records():
        yield {"scene_id": "a", "prompts": ["", "", ""], "layer_valid": np.ones(3, np.uint8),
               "boxes": np.zeros((3, 4), np.float32), "num_foregrounds": 1,
               "latents": np.zeros((3, 2, 2, 4), np.float32),
               "latents_flipped": np.zeros((3, 2, 2, 4), np.float32),
               "text": np.zeros((3, 5, 8), np.float32)}
        raise RuntimeError("disk on fire")

    with pytest.raises((RuntimeError, DreamLayerError)):
        write_cache(tmp_path / "cache", records(), keys=(), metadata={},
                    empty={"text": np.zeros((5, 8), np.float32)})
    assert list(tmp_path.iterdir()) == []
