"""Fine-tuning options in one compiled step: LoRA + role embeddings only on a frozen base,
bfloat16 compute over float32 master weights, gradient accumulation over 2 micro-steps."""

import jax
import numpy as np
from tiny_model import SMALL_UNET, TINY_SCHEDULER, TINY_TEXT, WORDS, small_train_fields

from dreamlayer_jax.parallel.mesh import make_mesh
from dreamlayer_jax.pipeline.components import is_dreamlayer_param
from dreamlayer_jax.pipeline.create import create_model_folder
from dreamlayer_jax.training.config import TrainConfig


def _leaves(tree):
    return {tuple(str(getattr(k, "key", k)) for k in path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_leaves_with_path(jax.device_get(tree))}


def test_lora_only_bf16_accumulated_steps_train_only_dreamlayer_params(tmp_path):
    from dreamlayer_jax.training.loop import Trainer

    model = create_model_folder(
        tmp_path / "model", unet=SMALL_UNET, text_encoder=TINY_TEXT, words=WORDS,
        dreamlayer={"max_layers": 4, "codec": "pixel", "pixel_unshuffle": 2,
                    "resolution": 16, "lora_rank": 2},
        scheduler=TINY_SCHEDULER)
    cfg = TrainConfig(**small_train_fields(model, train_params="dreamlayer",
                                           compute_dtype="bfloat16", grad_accum=2,
                                           learning_rate=1e-2, warmup_steps=0))
    trainer = Trainer(cfg, tmp_path / "run", mesh=make_mesh(1, 1, 1, devices=jax.devices()[:1]))
    batch = trainer.device_batch(next(trainer.make_iterator()))
    state = trainer.initial_state()
    before = _leaves(state.params)
    params_after_one = None
    for i in range(4):  # 4 micro-steps = 2 optimizer updates
        state, metrics = trainer.step_fn(state, trainer.text_params, batch)
        assert bool(metrics["finite"]), i
        if i == 0:
            params_after_one = _leaves(state.params)
    after = _leaves(state.params)
    assert all(v.dtype == np.float32 for v in after.values())  # f32 master weights
    trained = [k for k in after if is_dreamlayer_param(k)]
    assert set(_leaves(state.ema)) == set(trained)  # no EMA copy of the frozen base
    assert any("lora" in "/".join(k) for k in trained) and any(
        k[0] == "role_embedding" for k in trained)
    for key, value in after.items():
        if is_dreamlayer_param(key):
            assert not np.array_equal(value, before[key]), key
        else:
            np.testing.assert_array_equal(value, before[key], err_msg=str(key))
    # accumulation: the first micro-step only accumulates, the weights wait for the second
    for key, value in params_after_one.items():
        np.testing.assert_array_equal(value, before[key], err_msg=str(key))


def test_trained_text_encoder_learns_and_is_exported(tmp_path):
    """`train_text_encoder`: the encoder's weights move with the UNet's, the EMA keeps
    them, and the export's `text_encoder/` holds the averaged weights (the base's
    tokenizer and scheduler copied), so the exported model encodes prompts differently."""
    import pytest

    from dreamlayer_jax.errors import ConfigError
    from dreamlayer_jax.pipeline.dreamlayer import DreamLayerPipeline
    from dreamlayer_jax.training.loop import Trainer

    model = create_model_folder(
        tmp_path / "model", unet=SMALL_UNET, text_encoder=TINY_TEXT, words=WORDS,
        dreamlayer={"max_layers": 4, "codec": "pixel", "pixel_unshuffle": 2,
                    "resolution": 16}, scheduler=TINY_SCHEDULER)
    for bad in ({"train_params": "kv"}, {"data_cache": str(tmp_path / "cache")}):
        with pytest.raises(ConfigError, match="train_text_encoder"):
            TrainConfig(**small_train_fields(model, train_text_encoder=True, **bad))
    cfg = TrainConfig(**small_train_fields(model, train_text_encoder=True, num_steps=2,
                                           learning_rate=1e-2, warmup_steps=0))
    trainer = Trainer(cfg, tmp_path / "run", mesh=make_mesh(1, 1, 1, devices=jax.devices()[:1]))
    assert trainer.text_params == []
    batch = trainer.device_batch(next(trainer.make_iterator()))
    state = trainer.initial_state()
    before = _leaves(state.params)
    state, metrics = trainer.step_fn(state, trainer.text_params, batch)
    assert bool(metrics["finite"])
    after = _leaves(state.params)
    moved = {k[0] for k in after if not np.array_equal(after[k], before[k])}
    assert moved == {"unet", "text_encoders"}
    text_keys = [k for k in after if k[0] == "text_encoders"]
    assert set(text_keys) <= set(_leaves(state.ema))  # the encoder has an EMA copy

    out = trainer.export(tmp_path / "export", state)
    base = DreamLayerPipeline.from_pretrained(model)
    exported = DreamLayerPipeline.from_pretrained(out)
    prompts = ["a red star", "a blue ring"]
    np.testing.assert_array_equal(exported.conditioner.tokenize(prompts)[0],
                                  base.conditioner.tokenize(prompts)[0])
    got, want = exported.conditioner.encode(prompts)[0], base.conditioner.encode(prompts)[0]
    assert not np.allclose(np.asarray(got), np.asarray(want))
    _, conditioner = trainer.ema_parts(state)  # the export is the EMA's encoder exactly
    np.testing.assert_allclose(np.asarray(got), np.asarray(conditioner.encode(prompts)[0]),
                               rtol=1e-6, atol=1e-6)
