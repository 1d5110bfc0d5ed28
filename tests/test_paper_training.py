"""Training the paper variant (DESIGN.md section 8): K/V-only training, the global prompt
rebuilt from the layers', the context-map losses, the layer-count curriculum, and
configs/paper_sd15.py on a plain SD-shaped diffusers folder.

Two compiled train steps in all: the tiny paper model's (overfitting) and the SD-shaped
folder's (the config: steps, resume across a curriculum stage switch, export).
"""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_model import SMALL_UNET, TINY_SCHEDULER, TINY_TEXT, WORDS, small_train_fields

from dreamlayer_jax.attention.context import make_roles
from dreamlayer_jax.attention.masks import ROLE_FOREGROUND
from dreamlayer_jax.data.input_pipeline import make_train_iterator
from dreamlayer_jax.data.scene_example import scene_to_example
from dreamlayer_jax.data.synthetic import SyntheticSceneGenerator
from dreamlayer_jax.errors import ConfigError, DataError
from dreamlayer_jax.parallel.mesh import make_mesh
from dreamlayer_jax.pipeline.create import create_model_folder
from dreamlayer_jax.training.config import TrainConfig, load_config_file
from dreamlayer_jax.training.losses import area_resize, context_loss, layout_loss
from dreamlayer_jax.training.optimizer import is_kv_param
from dreamlayer_jax.training.step import map_loss_mask, paper_layer_tokens

PAPER = {"max_layers": 4, "codec": "pixel", "pixel_unshuffle": 2, "resolution": 16,
         "variant": "paper", "context_width": 16, "context_heads": 2, "context_layers": 1}
LOSSES = ("loss_noise", "loss_context", "loss_layout")
OVERFIT_STEPS, PROBES = 40, 4


def _leaves(tree) -> dict[tuple[str, ...], np.ndarray]:
    return {tuple(str(getattr(k, "key", k)) for k in path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_leaves_with_path(jax.device_get(tree))}


def _one_device():
    return make_mesh(1, 1, 1, devices=jax.devices()[:1])


@pytest.fixture(scope="module")
def paper_trainer(tmp_path_factory):
    """A tiny paper-variant model training K/V only on 4 fixed synthetic scenes."""
    from dreamlayer_jax.training.loop import Trainer

    root = tmp_path_factory.mktemp("paper")
    model = create_model_folder(root / "model", unet=SMALL_UNET, text_encoder=TINY_TEXT,
                                words=WORDS, dreamlayer=PAPER, scheduler=TINY_SCHEDULER)
    cfg = TrainConfig(**small_train_fields(
        model, train_params="kv", synthetic_scenes=4, flip_prob=0.0, prompt_dropout=0.0,
        learning_rate=3e-2, warmup_steps=0, end_lr_ratio=1.0))
    trainer = Trainer(cfg, root / "run", mesh=_one_device())
    return trainer, trainer.device_batch(next(trainer.make_iterator()))


def _probe(trainer, state, batch) -> np.ndarray:
    """`[PROBES, 3]` noise/context/layout losses of `state`'s weights at the timesteps and
    noise of steps 0..PROBES-1 (a step's metrics are computed before its update), so
    two weight sets are compared on the same draws."""
    rows = []
    for i in range(PROBES):
        probe = jax.tree.map(jnp.copy, state).replace(step=jnp.int32(i))
        _, metrics = trainer.step_fn(probe, trainer.text_params, batch)
        rows.append([float(metrics[k]) for k in LOSSES])
    return np.array(rows)


def test_paper_model_overfits_a_few_scenes_training_only_kv(paper_trainer):
    trainer, batch = paper_trainer
    state = trainer.initial_state()
    before_params = _leaves(state.params)
    trained = {k for k in before_params if is_kv_param(k)}
    assert any("to_k_fg" in k for k in trained) and ("layer_assign",) in trained
    assert any(k[0] == "context_layers" for k in trained)
    assert set(_leaves(state.ema)) == trained  # no EMA copy of a frozen leaf
    adam = [x for x in jax.tree.leaves(state.opt_state) if np.ndim(x)]
    assert sum(np.size(x) for x in adam) == 2 * sum(before_params[k].size for k in trained)
    first = _probe(trainer, state, batch)
    history = []
    for _ in range(OVERFIT_STEPS):
        state, metrics = trainer.step_fn(state, trainer.text_params, batch)
        history.append([float(metrics[k]) for k in LOSSES])
        assert bool(metrics["finite"]) and int(metrics["prompt_overflow"]) == 0
        np.testing.assert_allclose(
            float(metrics["loss"]), sum(history[-1]), rtol=1e-5)  # weights 1, 1
    last = _probe(trainer, state, batch)
    ratio = last.mean(0) / first.mean(0)
    print("paired losses before", first.mean(0), "after", last.mean(0), "ratio", ratio,
          "history first/last 5", np.mean(history[:5], 0), np.mean(history[-5:], 0))
    # measured (40 steps): context 0.15x, layout 0.49x, noise 0.83x. K/V alone barely
    # move a random UNet's denoising: its noise loss falls slowly (0.82x after 60 steps)
    assert ratio[1] < 0.5 and ratio[2] < 0.7 and ratio[0] < 0.9, ratio
    after_params = _leaves(state.params)
    for key, value in after_params.items():
        if key in trained:
            assert not np.array_equal(value, before_params[key]), key
        else:
            np.testing.assert_array_equal(value, before_params[key], err_msg=str(key))


def test_context_and_layout_losses_match_numpy():
    rng = np.random.default_rng(0)
    b, num_layers, hm, wm = 2, 4, 2, 3
    maps = rng.uniform(-0.3, 1.3, (b, num_layers, hm, wm)).astype(np.float32)
    own = rng.uniform(0, 1, maps.shape).astype(np.float32)
    alpha = rng.uniform(0, 1, (b, num_layers, 2 * hm, 2 * wm)).astype(np.float32)
    mask = np.array([[False, True, True, False], [False, True, False, False]])
    small = alpha.reshape(b, num_layers, hm, 2, wm, 2).mean(axis=(3, 5))
    want_c = np.mean([np.mean((maps[i, j] - small[i, j]) ** 2) for i, j in zip(*mask.nonzero())])
    want_l = np.mean([np.mean((own[i, j] - np.clip(maps[i, j], 0, 1)) ** 2)
                      for i, j in zip(*mask.nonzero())])
    np.testing.assert_allclose(area_resize(jnp.asarray(alpha), hm, wm), small, rtol=1e-6)
    garbage = (~mask)[..., None, None]  # padded / other slots may hold anything
    maps_g, alpha_g = np.where(garbage, np.nan, maps), np.where(garbage, np.nan, alpha)
    np.testing.assert_allclose(context_loss(maps_g, alpha_g, mask), want_c, rtol=1e-5)
    np.testing.assert_allclose(layout_loss(maps_g, own, mask), want_l, rtol=1e-5)
    assert float(context_loss(maps, alpha, np.zeros_like(mask))) == 0.0
    assert float(layout_loss(maps, own, np.zeros_like(mask))) == 0.0
    # the context map is a fixed target of L_layout; L_c reaches it
    assert not np.any(jax.grad(layout_loss)(jnp.asarray(maps), own, mask))
    assert np.any(jax.grad(context_loss)(jnp.asarray(maps), alpha, mask))
    # sizes that do not divide: antialiased linear resize, constant stays constant
    np.testing.assert_allclose(area_resize(jnp.full((1, 5, 7), 0.25), 2, 3), 0.25, rtol=1e-6)


def test_global_prompt_is_rebuilt_unless_dropped_and_the_map_loss_mask():
    eos, pad, sos = 9, 0, 8
    ids = np.full((2, 4, 8), pad, np.int32)
    ids[:, :, 0] = sos
    ids[:, :, 1] = eos  # empty prompts
    ids[:, 0, 1:4] = [5, 6, eos]  # background "5 6"
    ids[0, 1, 1:3] = [7, eos]  # scene 0's foreground "7"; slot 2 valid but dropped ("")
    ids[1, 1, 1:3] = [4, eos]
    ids[0, 3, 1:3] = [3, eos]  # scene 0's own global prompt (replaced); scene 1's dropped
    valid = np.array([[True, True, True, True], [True, True, False, True]])
    rebuild = jax.jit(paper_layer_tokens, static_argnames=("eos_id", "pad_id"))  # one compile
    tokens = rebuild(jnp.asarray(ids), jnp.asarray(valid), eos_id=eos, pad_id=pad)
    np.testing.assert_array_equal(tokens.ids[0, 3], [sos, 5, 6, 7, eos, pad, pad, pad])
    np.testing.assert_array_equal(tokens.token_owner[0], [-1, 0, 0, 1, -1, -1, -1, -1])
    np.testing.assert_array_equal(tokens.ids[1], ids[1])  # dropped: the global stays ""
    assert (np.asarray(tokens.token_owner[1]) == -1).all()
    assert not np.asarray(tokens.own_tokens[1, 3]).any()
    np.testing.assert_array_equal(tokens.lengths, [5, 2])
    roles = make_roles(jnp.asarray(valid))
    assert int(roles[0, 1]) == ROLE_FOREGROUND
    mask = jax.jit(map_loss_mask)(tokens, roles, jnp.asarray(valid))
    # scene 0: foreground 1 has a map, foreground 2 (dropped prompt) none; scene 1: no
    # global prompt, no map
    np.testing.assert_array_equal(mask, [[False, True, False, False], [False] * 4])


@pytest.fixture(scope="module")
def scenes():
    gen = SyntheticSceneGenerator(resolution=16, max_foregrounds=3)
    return [scene_to_example(gen.sample((0, i)), f"s{i}") for i in range(24)]


def test_curriculum_switches_stage_at_its_step_and_resumes_exactly(scenes):
    stages = ((0, 1), (3, 2), (5, 3))
    kwargs = {"batch_size": 2, "max_layers": 5, "seed": 0, "shard_index": 0,
              "shard_count": 1, "curriculum": stages}
    it = make_train_iterator(scenes, **kwargs)
    batches = [next(it) for _ in range(9)]
    counts = [b["layer_valid"].sum(axis=1) - 2 for b in batches]
    for step, count in enumerate(counts):
        limit = [lim for start, lim in stages if start <= step][-1]
        assert count.max() <= limit, (step, count)
        assert batches[step]["pixels"].shape[1] == 5  # L_max fixed: one compilation
    assert max(c.max() for c in counts[3:]) > 1  # the later stages do draw bigger scenes
    for stop in (2, 3, 4):  # resume before, at and after a switch
        first = make_train_iterator(scenes, **kwargs)
        for _ in range(stop):
            next(first)
        resumed = make_train_iterator(scenes, **kwargs)
        resumed.set_state(first.get_state())
        for want in batches[stop:]:
            got = next(resumed)
            assert got["scene_ids"] == want["scene_ids"]
            np.testing.assert_array_equal(got["pixels"], want["pixels"])
    with pytest.raises(ConfigError, match="must lie in"):
        make_train_iterator(scenes, **{**kwargs, "curriculum": ((0, 4),)})
    with pytest.raises(ConfigError, match="start at step 0"):
        make_train_iterator(scenes, **{**kwargs, "curriculum": ((1, 1),)})
    with pytest.raises(ConfigError, match="num_epochs"):
        make_train_iterator(scenes, **kwargs, num_epochs=1)
    with pytest.raises(DataError, match="stage 0"):
        make_train_iterator(scenes, **{**kwargs, "curriculum": ((0, 0),)})


def test_train_config_fields_of_the_paper_variant(tmp_path):
    path = tmp_path / "c.py"
    path.write_text("def get_config():\n    return {'train_params': 'kv'}\n")
    cfg = load_config_file(path, ["curriculum=((0, 1), (10, 3))", "sample_scheduler=ddim"])
    assert cfg.curriculum == ((0, 1), (10, 3)) and cfg.train_params == "kv"
    assert TrainConfig(curriculum=[[0, 2]]).curriculum == ((0, 2),)  # JSON lists
    for bad in ("curriculum=((5, 1),)", "curriculum=((0, 1), (0, 2))", "curriculum=7",
                "sample_scheduler=bogus", "context_loss_weight=-1"):
        with pytest.raises(ConfigError):
            load_config_file(path, [bad])


def test_paper_sd15_config_trains_a_plain_sd_folder_resumes_across_a_stage_and_exports(
        tmp_path, monkeypatch):
    """configs/paper_sd15.py as written, shrunk: a plain diffusers SD folder (VAE codec,
    no dreamlayer/) becomes a paper-variant model; 3 steps across a curriculum switch at
    step 2; resuming from step 2 gives step 3's loss bit for bit; the export loads as
    the paper variant with the trained weights."""
    from test_text2img import write_tiny_sd

    from dreamlayer_jax.pipeline.dreamlayer import DreamLayerPipeline
    from dreamlayer_jax.training.loop import Trainer

    folder = write_tiny_sd(tmp_path / "sd")
    cfg = load_config_file(Path(__file__).parents[1] / "configs" / "paper_sd15.py", [
        f"model={folder}", "batch_size=2", "num_steps=3", "checkpoint_every=1",
        "log_every=1", "sample_every=0", "synthetic_scenes=12", "synthetic_resolution=16",
        "curriculum=((0, 1), (2, 3))", "progress=False", "async_checkpoints=False"])
    assert (cfg.train_params, cfg.dreamlayer["variant"], cfg.sample_steps) == ("kv", "paper", 50)
    trainer = Trainer(cfg, tmp_path / "full", mesh=_one_device())
    assert trainer.pipe.config.variant == "paper" and trainer.max_layers == 5
    assert not (folder / "dreamlayer").exists()
    full = dict(trainer.run())
    assert sorted(full) == [1, 2, 3] and all(np.isfinite(v) for v in full.values())
    batch = trainer.device_batch(next(trainer.make_iterator()))
    _, metrics = trainer.step_fn(trainer.initial_state(), trainer.text_params, batch)
    assert all(np.isfinite(float(metrics[k])) for k in LOSSES)
    # the toy tokenizer spells unknown words: 16 tokens cannot hold the layers' prompts
    assert 1 <= int(metrics["prompt_overflow"]) <= cfg.batch_size
    monkeypatch.setattr(trainer, "cfg", cfg.replace(num_steps=2))
    trainer.run(workdir=tmp_path / "cut")
    monkeypatch.setattr(trainer, "cfg", cfg)
    resumed = dict(trainer.run(resume=True, workdir=tmp_path / "cut"))
    assert resumed == {3: full[3]}
    exported = DreamLayerPipeline.from_pretrained(tmp_path / "cut" / "export")
    assert exported.config.variant == "paper" and exported.config.max_layers == 5
    ema = _leaves(trainer.state.ema)
    from flax import nnx

    loaded = _leaves(nnx.to_pure_dict(nnx.state(exported.unet, nnx.Param)))
    assert set(ema) <= set(loaded) and any("to_v_fg" in k for k in ema)
    for key, value in ema.items():
        np.testing.assert_allclose(loaded[key], value, rtol=1e-6, err_msg=str(key))


def test_paper_train_step_on_a_layer_sharded_mesh_equals_one_device(paper_trainer, tmp_path):
    if jax.device_count() < 8:
        pytest.skip("needs XLA_FLAGS=--xla_force_host_platform_device_count=8")
    from dreamlayer_jax.training.loop import Trainer

    trainer, first = paper_trainer
    _, single = trainer.step_fn(trainer.initial_state(), trainer.text_params, first)
    # LSSA partitioned over a layer axis of 2 (the loss function gets the trainer's mesh)
    sharded = Trainer(trainer.cfg, tmp_path / "run", mesh=make_mesh(2, 1, 2,
                                                                     devices=jax.devices()[:4]))
    batch = sharded.device_batch(next(trainer.make_iterator()))  # the same first batch
    _, metrics = sharded.step_fn(sharded.initial_state(), sharded.text_params, batch)
    for name in ("loss", *LOSSES):
        assert float(metrics[name]) == pytest.approx(float(single[name]), rel=1e-4, abs=1e-6)
