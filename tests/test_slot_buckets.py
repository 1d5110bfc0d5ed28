"""Slot buckets: batches of alike foreground counts padded only to their own slot count,
scheduled as a pure function of the step (resumable), and a trainer that runs on them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_model import SMALL_UNET, TINY_SCHEDULER, TINY_TEXT, WORDS, small_train_fields

from dreamlayer_jax.data.input_pipeline import make_train_iterator
from dreamlayer_jax.data.scene_example import scene_to_example
from dreamlayer_jax.data.slot_buckets import bucket_groups, bucket_schedule, group_slots
from dreamlayer_jax.data.synthetic import SyntheticSceneGenerator
from dreamlayer_jax.errors import ConfigError, DataError


def test_groups_close_at_min_size_from_the_largest_count_down():
    counts = np.array([1] * 10 + [2] * 10 + [3] * 1)
    assert bucket_groups(counts, 4) == [(1,), (2, 3)]  # one 3-foreground scene joins the 2s
    counts = np.array([1] * 2 + [2] * 10 + [3] * 10)
    assert bucket_groups(counts, 4) == [(1, 2), (3,)]  # the rare small end joins upwards
    assert bucket_groups(np.array([0, 0, 0, 0]), 2) == [(0,)]  # one count, one group
    assert [group_slots(g) for g in ([0], [1], [1, 2], [3])] == [3, 3, 4, 5]
    with pytest.raises(DataError, match="fewer than one batch"):
        bucket_groups(np.array([1, 2]), 4)


def test_schedule_shares_follow_the_group_sizes_and_interleave():
    pattern = bucket_schedule([300, 100, 200], period=60)
    assert np.bincount(pattern).tolist() == [30, 10, 20]
    longest = max(len(run) for run in np.split(pattern, np.flatnonzero(np.diff(pattern)) + 1))
    assert longest <= 2  # spread out, not 30 steps of one group in a row
    assert np.bincount(bucket_schedule([1000, 1], period=8)).tolist() == [7, 1]


@pytest.fixture(scope="module")
def scenes():
    gen = SyntheticSceneGenerator(resolution=16, max_foregrounds=3)
    return [scene_to_example(gen.sample((0, i)), f"s{i}") for i in range(36)]


def test_bucketed_batches_pad_less_and_resume_exactly(scenes):
    kwargs = {"batch_size": 2, "max_layers": 5, "seed": 0, "shard_index": 0,
              "shard_count": 1, "slot_buckets": True}
    it = make_train_iterator(scenes, **kwargs)
    batches = [next(it) for _ in range(24)]
    counts = np.array([len(s["layer_prompts"]) for s in scenes])
    groups = bucket_groups(counts, 2)
    padded, padded_plain = 0.0, 0.0
    for batch in batches:
        slots = batch["pixels"].shape[1]
        fg = batch["layer_valid"].sum(axis=1) - 2
        group = next(g for g in groups if fg[0] in g)
        assert all(c in group for c in fg) and slots == group_slots(group)
        padded += (~batch["layer_valid"]).mean()
        padded_plain += 1 - (fg + 2).mean() / 5
    assert {b["pixels"].shape[1] for b in batches} == {group_slots(g) for g in groups}
    assert padded < 0.5 * padded_plain  # far fewer empty slots than padding to L_max = 5
    for stop in (1, 5, 11):
        first = make_train_iterator(scenes, **kwargs)
        for _ in range(stop):
            next(first)
        resumed = make_train_iterator(scenes, **kwargs)
        resumed.set_state(first.get_state())
        for want in batches[stop:stop + 6]:
            got = next(resumed)
            assert got["scene_ids"] == want["scene_ids"]
            np.testing.assert_array_equal(got["pixels"], want["pixels"])
    with pytest.raises(ConfigError, match="do not combine"):
        make_train_iterator(scenes, **kwargs, curriculum=((0, 1),))
    with pytest.raises(ConfigError, match="num_epochs"):
        make_train_iterator(scenes, **kwargs, num_epochs=1)
    with pytest.raises(DataError, match="more than 1 foregrounds"):
        make_train_iterator(scenes, **{**kwargs, "max_layers": 3})


PAPER = {"variant": "paper", "context_width": 16, "context_heads": 2, "context_layers": 1}


@pytest.mark.parametrize("variant", ["box", "paper"])
def test_trainer_runs_on_bucketed_batches_of_two_layer_counts(tmp_path, variant):
    from dreamlayer_jax.parallel.mesh import make_mesh
    from dreamlayer_jax.pipeline.create import create_model_folder
    from dreamlayer_jax.training.config import TrainConfig
    from dreamlayer_jax.training.loop import Trainer

    dreamlayer = {"max_layers": 4, "codec": "pixel", "pixel_unshuffle": 2, "resolution": 16,
                  **(PAPER if variant == "paper" else {})}
    model = create_model_folder(
        tmp_path / "model", unet=SMALL_UNET, text_encoder=TINY_TEXT, words=WORDS,
        dreamlayer=dreamlayer, scheduler=TINY_SCHEDULER)
    with pytest.raises(ConfigError, match="slot_buckets"):
        TrainConfig(**small_train_fields(model, slot_buckets=True, curriculum=((0, 1),)))
    # the box run also weights its foregrounds' loss towards their edges (the alphas
    # come from each bucket's own pixels)
    edge = {"edge_loss_weight": 5.0} if variant == "box" else {}
    cfg = TrainConfig(**small_train_fields(model, slot_buckets=True, batch_size=2,
                                           synthetic_scenes=16, num_steps=4, log_every=1,
                                           checkpoint_every=4, export=False, **edge))
    trainer = Trainer(cfg, tmp_path / "run", mesh=make_mesh(1, 1, 1, devices=jax.devices()[:1]))
    it = trainer.make_iterator()
    assert {next(it)["pixels"].shape[1] for _ in range(4)} == {3, 4}
    if variant == "paper":  # the context-map losses see each bucket's own slot count
        state, it = trainer.initial_state(), trainer.make_iterator()
        by_slots = {b["pixels"].shape[1]: b for b in (next(it) for _ in range(4))}
        for batch in by_slots.values():
            _, metrics = trainer.step_fn(jax.tree.map(jnp.copy, state), trainer.text_params,
                                         trainer.device_batch(batch))
            assert float(metrics["loss_context"]) > 0 and np.isfinite(float(metrics["loss_layout"]))
    history = trainer.run()
    assert len(history) == 4 and all(np.isfinite(loss) for _, loss in history)
