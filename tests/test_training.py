"""Training: overfitting, non-finite skips, exact resume after SIGKILL, sharded == unsharded.

One small model and one trainer per module: its jitted step (one compile) serves the
overfitting, skipping and resume tests; the sharded test adds one 8-device compile. The
killed run is a subprocess started first, so it compiles while this process does.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_model import small_train_fields, write_small_train_model

from dreamlayer_jax.errors import ConfigError, NumericalError
from dreamlayer_jax.parallel.mesh import make_mesh
from dreamlayer_jax.training.checkpoint import Checkpointer
from dreamlayer_jax.training.config import TrainConfig, config_from_dict, load_config_file

STEPS, KILL_AT = 6, 3

CHILD = textwrap.dedent("""
    import json, os, signal, sys
    import jax
    jax.config.update("jax_default_matmul_precision", "highest")
    from dreamlayer_jax.parallel.mesh import make_mesh
    from dreamlayer_jax.training.config import TrainConfig
    from dreamlayer_jax.training.loop import Trainer
    cfg = TrainConfig(**json.loads(sys.argv[1]))
    def kill(step):
        if step == int(sys.argv[3]):
            print("saved", step, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
    trainer = Trainer(cfg, sys.argv[2], mesh=make_mesh(1, 1, 1, devices=jax.devices()[:1]),
                      on_checkpoint=kill)
    trainer.run()
""")


def small_config(model: Path) -> TrainConfig:
    return TrainConfig(**small_train_fields(model, num_steps=STEPS, checkpoint_every=KILL_AT))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("training")
    model = write_small_train_model(root / "model")
    cfg = small_config(model)
    fields = {k: v for k, v in cfg.__dict__.items() if k != "extra"}
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(fields), str(root / "killed"), str(KILL_AT)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    from dreamlayer_jax.training.loop import Trainer

    trainer = Trainer(cfg, root / "full", mesh=make_mesh(1, 1, 1, devices=jax.devices()[:1]))
    batch = trainer.device_batch(next(trainer.make_iterator()))
    yield {"root": root, "cfg": cfg, "trainer": trainer, "batch": batch, "child": child}
    child.kill()


def _host(tree):
    return jax.tree.map(np.asarray, jax.device_get(tree))


def test_overfits_one_batch(setup):
    trainer, batch = setup["trainer"], setup["batch"]
    state, losses = trainer.initial_state(), []
    for _ in range(60):
        state, metrics = trainer.step_fn(state, trainer.text_params, batch)
        losses.append(float(metrics["loss"]))
    start, end = np.mean(losses[:5]), np.mean(losses[-10:])
    # t and noise are redrawn every step, so the loss stays noisy: assert a 15% drop
    assert end < 0.85 * start, (start, end)


def test_nonfinite_step_is_skipped_and_counted(setup):
    trainer, batch = setup["trainer"], setup["batch"]
    state = trainer.initial_state()
    state, _ = trainer.step_fn(state, trainer.text_params, batch)
    before = _host(state)
    bad = {**batch, "pixels": jnp.full_like(batch["pixels"], jnp.nan)}
    state, metrics = trainer.step_fn(state, trainer.text_params, bad)
    assert not bool(metrics["finite"])
    assert int(metrics["nonfinite"]) == 1 and int(metrics["skipped"]) == 1
    after = _host(state)
    jax.tree.map(np.testing.assert_array_equal, after.params, before.params)
    jax.tree.map(np.testing.assert_array_equal, after.ema, before.ema)
    state, metrics = trainer.step_fn(state, trainer.text_params, batch)
    assert bool(metrics["finite"])
    assert int(metrics["nonfinite"]) == 0 and int(metrics["skipped"]) == 1
    assert int(state.step) == 3


def test_run_stops_after_consecutive_nonfinite_steps_keeping_last_checkpoint(setup, monkeypatch):
    trainer, root = setup["trainer"], setup["root"]
    good = trainer.host_arrays
    calls = []

    def poisoned(batch):
        calls.append(1)
        arrays = good(batch)
        if len(calls) > KILL_AT:
            arrays["pixels"] = np.full_like(arrays["pixels"], np.nan)
        return arrays

    monkeypatch.setattr(trainer, "host_arrays", poisoned)
    monkeypatch.setattr(trainer, "cfg", trainer.cfg.replace(max_nonfinite=2))
    with pytest.raises(NumericalError, match="2 consecutive steps"):
        trainer.run(workdir=root / "nan")
    assert Checkpointer(root / "nan").latest_step() == KILL_AT


def test_resume_after_sigkill_matches_uninterrupted_run_bit_for_bit(setup):
    trainer, root, child = setup["trainer"], setup["root"], setup["child"]
    full = dict(trainer.run(workdir=root / "full"))
    out, err = child.communicate(timeout=600)
    assert child.returncode == -9, err[-2000:]
    assert f"saved {KILL_AT}" in out
    resumed = dict(trainer.run(resume=True, workdir=root / "killed"))
    assert sorted(resumed) == list(range(KILL_AT + 1, STEPS + 1))
    for step, loss in resumed.items():
        assert loss == full[step], (step, loss, full[step])
    # the exported EMA weights load as a pipeline
    from dreamlayer_jax.pipeline.dreamlayer import DreamLayerPipeline

    pipe = DreamLayerPipeline.from_pretrained(root / "killed" / "export")
    np.testing.assert_array_equal(np.asarray(pipe.unet.role_embedding.embedding[...]),
                                  np.asarray(trainer.state.ema["role_embedding"]["embedding"]))


def test_sharded_step_equals_single_device_step(setup):
    trainer, batch = setup["trainer"], setup["batch"]
    single = trainer.step_fn(trainer.initial_state(), trainer.text_params, batch)
    mesh = make_mesh(2, 2, 2)
    sharded_fn = trainer.jit_step(mesh)
    from dreamlayer_jax.training.step import place_batch

    host_batch = {k: np.asarray(v) for k, v in batch.items()}
    sharded = sharded_fn(trainer.initial_state(mesh), trainer.text_params,
                         place_batch(host_batch, mesh))
    np.testing.assert_allclose(float(sharded[1]["loss"]), float(single[1]["loss"]), atol=1e-5)
    flat_a = jax.tree.leaves(_host(single[0].params))
    flat_b = jax.tree.leaves(_host(sharded[0].params))
    for a, b in zip(flat_a, flat_b, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_config_file_and_overrides(tmp_path):
    path = tmp_path / "c.py"
    path.write_text("def get_config():\n    return {'num_steps': 7, 'mesh': (1, 2, 1)}\n")
    cfg = load_config_file(path, ["batch_size=8", "train_params=dreamlayer"])
    assert (cfg.num_steps, cfg.batch_size, cfg.mesh, cfg.train_params) == (
        7, 8, (1, 2, 1), "dreamlayer")
    with pytest.raises(ConfigError, match="unknown keys"):
        config_from_dict({"num_step": 3})
    with pytest.raises(ConfigError, match="batch_size"):
        load_config_file(path, ["batch_size=0"])
    cfg = load_config_file(path, ["dreamlayer={'lora_rank': 8}"])
    assert cfg.dreamlayer == {"lora_rank": 8}
    with pytest.raises(ConfigError, match=r"dreamlayer has unknown keys \['lora_rnak'\]"):
        load_config_file(path, ["dreamlayer={'lora_rnak': 8}"])
    with pytest.raises(ConfigError, match="must be a dict"):
        load_config_file(path, ["dreamlayer=8"])


def test_checkpoint_from_one_device_restores_onto_a_2x2x2_mesh(setup, tmp_path):
    from dreamlayer_jax.training.checkpoint import abstract_like
    from dreamlayer_jax.training.step import state_shardings

    trainer, batch = setup["trainer"], setup["batch"]
    state, _ = trainer.step_fn(trainer.initial_state(), trainer.text_params, batch)
    ckpt = Checkpointer(tmp_path, async_save=False)
    ckpt.save(1, state, {"it": 1})
    ckpt.close()
    mesh = make_mesh(2, 2, 2)
    target = abstract_like(state, state_shardings(mesh, state))
    step, restored, data_state, _ = Checkpointer(tmp_path).restore(target)
    assert step == 1 and data_state == {"it": 1}
    for a, b, want in zip(jax.tree.leaves(_host(state)), jax.tree.leaves(restored),
                          jax.tree.leaves(target), strict=True):
        np.testing.assert_array_equal(np.asarray(b), a)
        assert b.sharding.is_equivalent_to(want.sharding, b.ndim)
    sharded = [x for x in jax.tree.leaves(restored) if len(x.sharding.device_set) == 8
               and not x.sharding.is_fully_replicated]
    assert sharded, "no leaf was laid out over fsdp on the new mesh"


def test_export_records_the_trained_prediction_type(setup, tmp_path, monkeypatch):
    trainer = setup["trainer"]
    monkeypatch.setattr(trainer, "cfg", trainer.cfg.replace(prediction_type="v_prediction"))
    folder = trainer.export(tmp_path / "export", trainer.initial_state())
    config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert config["prediction_type"] == "v_prediction"
    base = json.loads((trainer.base_folder / "scheduler" / "scheduler_config.json").read_text())
    assert base["prediction_type"] == "epsilon"
