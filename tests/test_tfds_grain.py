"""The dreamlayer_scenes TFDS builder (array_record, no TF) and the grain input pipeline."""

import json
import logging

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from dreamlayer_jax.data.batch import collate, global_slot, pad_example
from dreamlayer_jax.data.compositing import alpha_bbox
from dreamlayer_jax.data.input_pipeline import (
    flip_horizontal,
    make_eval_scenes,
    make_train_iterator,
    shard_slice,
)
from dreamlayer_jax.data.scene_example import scene_to_example
from dreamlayer_jax.data.scene_folder import read_scene_folder
from dreamlayer_jax.data.synthetic import SyntheticSceneGenerator, write_synthetic_folders
from dreamlayer_jax.data.tfds_builder import build_dataset, dataset_metadata, load_source
from dreamlayer_jax.errors import ConfigError, DataError

SEED, SIZE, MAX_FG, L_MAX = 7, 32, 3, 5
SYNTHETIC = dict(num_train=12, num_eval=4, seed=SEED, resolution=SIZE, max_foregrounds=MAX_FG)


@pytest.fixture(scope="module")
def synthetic_path(tmp_path_factory):
    return build_dataset("synthetic", tmp_path_factory.mktemp("tfds"), **SYNTHETIC)


@pytest.fixture(scope="module")
def source(synthetic_path):
    return load_source(synthetic_path, "train")


def _expected_scene(scene_id):
    """The generator's scene behind a synthetic scene id such as "eval/000003"."""
    split, index = scene_id.split("/")
    generator = SyntheticSceneGenerator(SIZE, max_foregrounds=MAX_FG)
    return generator.sample((SEED, 0 if split == "train" else 1, int(index)))


def _assert_same_example(got, want):
    for key in ("background", "layers", "boxes", "composite"):
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    for key in ("scene_id", "prompt", "background_prompt", "layer_prompts", "meta"):
        assert got[key] == want[key], key


def _assert_same_batch(got, want):
    for key in ("pixels", "layer_valid", "boxes"):
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    assert got["prompts"] == want["prompts"]
    assert got["scene_ids"] == want["scene_ids"]


def _iterator(source, **overrides):
    kwargs = dict(batch_size=4, max_layers=L_MAX, seed=3, shard_index=0, shard_count=1)
    return make_train_iterator(source, **{**kwargs, **overrides})


def test_synthetic_dataset_reads_back_the_generators_scenes(synthetic_path, source):
    eval_source = load_source(synthetic_path, "eval")
    assert (len(source), len(eval_source)) == (12, 4)
    for split_source in (source, eval_source):
        for index in range(len(split_source)):
            got = split_source[index]
            assert got["layers"].dtype == np.uint8 and got["boxes"].dtype == np.float32
            _assert_same_example(
                got, scene_to_example(_expected_scene(got["scene_id"]), got["scene_id"])
            )
    assert {source[i]["scene_id"] for i in range(12)} == {f"train/{i:06d}" for i in range(12)}
    # The eval split is its own seed stream, not a copy of train's first scenes.
    train_by_id = {source[i]["scene_id"]: source[i] for i in range(len(source))}
    for index in range(len(eval_source)):
        got = eval_source[index]
        twin = train_by_id[got["scene_id"].replace("eval", "train")]
        assert not np.array_equal(got["background"], twin["background"])
    meta = dataset_metadata(synthetic_path)
    assert meta["params"] == {**SYNTHETIC, "min_foregrounds": 1}
    assert meta["splits"]["train"]["loaded"] == 12 and meta["splits"]["train"]["skipped"] == 0
    assert meta["splits"]["train"]["max_foregrounds"] <= MAX_FG


def test_build_reuses_same_parameters_and_refuses_changed_ones(synthetic_path):
    data_dir = synthetic_path.parents[2]
    assert build_dataset("synthetic", data_dir, **SYNTHETIC) == synthetic_path
    with pytest.raises(ConfigError, match="already built"):
        build_dataset("synthetic", data_dir, **{**SYNTHETIC, "num_train": 13})
    with pytest.raises(ConfigError, match="unknown parameters"):
        build_dataset("synthetic", data_dir, num_scenes=3)
    with pytest.raises(ConfigError, match="unknown config"):
        build_dataset("psd", data_dir)
    with pytest.raises(DataError, match="no split"):
        load_source(synthetic_path, "validation")


def test_folder_dataset_skips_and_counts_the_corrupt_scene(tmp_path, caplog):
    root = tmp_path / "scenes"
    folders = write_synthetic_folders(root, 5, seed=11, resolution=SIZE, max_foregrounds=MAX_FG)
    bad = root / "scene_000002"
    (bad / "scene.json").write_text("{ not json")
    with caplog.at_level(logging.WARNING):
        path = build_dataset("folder", tmp_path / "tfds", root=root)
    split = dataset_metadata(path)["splits"]["train"]
    assert (split["loaded"], split["skipped"]) == (4, 1)
    assert (
        split["skipped_items"][0]["path"] == str(bad)
        and "JSON" in split["skipped_items"][0]["reason"]
    )
    assert any("skipped 1" in record.getMessage() for record in caplog.records)

    source = load_source(path, "train")
    by_id = {source[i]["scene_id"]: source[i] for i in range(len(source))}
    assert sorted(by_id) == sorted(f.name for f in folders if f != bad)
    for name, got in by_id.items():
        _assert_same_example(got, scene_to_example(read_scene_folder(root / name), name))
    # Through grain: no flips, no dropout, one epoch gives exactly the padded scenes.
    batches = list(_iterator(source, batch_size=2, flip_prob=0.0, prompt_dropout=0.0, num_epochs=1))
    assert len(batches) == 2
    for batch in batches:
        _assert_same_batch(
            batch, collate([pad_example(by_id[i], L_MAX) for i in batch["scene_ids"]])
        )


def test_pipeline_without_augmentation_yields_the_padded_generator_scenes(source):
    batches = list(_iterator(source, flip_prob=0.0, prompt_dropout=0.0, num_epochs=2))
    assert len(batches) == 6
    first, second = ({i for b in batches[k : k + 3] for i in b["scene_ids"]} for k in (0, 3))
    assert first == second == {f"train/{i:06d}" for i in range(12)}  # each epoch sees all
    orders = [[b["scene_ids"] for b in batches[k : k + 3]] for k in (0, 3)]
    assert orders[0] != orders[1]  # each epoch is reshuffled
    for batch in batches[:3]:
        want = [scene_to_example(_expected_scene(i), i) for i in batch["scene_ids"]]
        _assert_same_batch(batch, collate([pad_example(w, L_MAX) for w in want]))
        assert batch["pixels"].shape == (4, L_MAX, SIZE, SIZE, 4)
        assert batch["pixels"].dtype == np.float32


def test_host_shards_are_disjoint_equal_and_cover_the_data(source):
    shards = [
        [
            i
            for b in _iterator(source, batch_size=2, num_epochs=1, shard_index=k, shard_count=2)
            for i in b["scene_ids"]
        ]
        for k in (0, 1)
    ]
    assert len(shards[0]) == len(shards[1]) == 6
    assert not set(shards[0]) & set(shards[1])
    assert set(shards[0]) | set(shards[1]) == {source[i]["scene_id"] for i in range(12)}
    uneven = [range(13)[shard_slice(13, k, 2)] for k in (0, 1)]
    assert len(uneven[0]) == len(uneven[1]) == 6 and not set(uneven[0]) & set(uneven[1])
    with pytest.raises(DataError, match="fewer than batch_size"):
        _iterator(source, batch_size=7, shard_index=1, shard_count=2)


def test_padding_marks_valid_slots_and_zeroes_padded_ones(source):
    example = next(source[i] for i in range(len(source)) if len(source[i]["layers"]) == 1)
    padded = pad_example(example, L_MAX)
    assert padded["layer_valid"].tolist() == [True, True, False, False, True]
    assert not padded["pixels"][2:4].any()
    assert padded["prompts"][2:4] == ["", ""]
    np.testing.assert_array_equal(padded["boxes"][[0, 2, 3, 4]], np.tile([0, 0, 1, 1], (4, 1)))
    np.testing.assert_array_equal(padded["boxes"][1], example["boxes"][0])
    np.testing.assert_array_equal(
        padded["pixels"][0, ..., :3], example["background"] / np.float32(255)
    )
    np.testing.assert_array_equal(padded["pixels"][1], example["layers"][0] / np.float32(255))
    np.testing.assert_array_equal(
        padded["pixels"][global_slot(L_MAX), ..., :3], example["composite"] / np.float32(255)
    )
    assert (padded["pixels"][[0, 4], ..., 3] == 1).all()
    assert padded["prompts"][0] == example["background_prompt"]
    assert padded["prompts"][4] == example["prompt"]
    batch = next(_iterator(source))
    counts = [len(_expected_scene(i).layers) for i in batch["scene_ids"]]
    assert batch["layer_valid"].sum(axis=1).tolist() == [k + 2 for k in counts]


def test_too_many_foregrounds_raise_data_error_naming_the_count(source):
    example = next(source[i] for i in range(len(source)) if len(source[i]["layers"]) == 3)
    with pytest.raises(DataError, match="3 foregrounds do not fit max_layers=4"):
        pad_example(example, 4)
    with pytest.raises(ConfigError):
        pad_example(example, 1)


def test_flip_moves_boxes_with_the_pixels(source):
    for index in range(len(source)):
        padded = pad_example(source[index], L_MAX)
        flipped = flip_horizontal(padded)
        np.testing.assert_array_equal(flipped["pixels"], padded["pixels"][:, :, ::-1])
        for slot in np.flatnonzero(padded["layer_valid"][1:-1]) + 1:
            x0, y0, x1, y1 = alpha_bbox(flipped["pixels"][slot, ..., 3])
            np.testing.assert_allclose(
                flipped["boxes"][slot], np.array([x0, y0, x1, y1]) / SIZE, atol=1e-6
            )
        np.testing.assert_array_equal(flipped["boxes"][[0, -1]], padded["boxes"][[0, -1]])
    # In the pipeline, flip_prob=1 flips every scene the same way.
    batch = next(_iterator(source, flip_prob=1.0, prompt_dropout=0.0))
    want = collate(
        [
            flip_horizontal(pad_example(scene_to_example(_expected_scene(i), i), L_MAX))
            for i in batch["scene_ids"]
        ]
    )
    _assert_same_batch(batch, want)


def test_prompt_dropout_has_rate_p_and_is_deterministic_given_the_seed(source):
    def prompts(seed, steps=30):
        iterator = _iterator(source, seed=seed, prompt_dropout=0.3, flip_prob=0.5)
        return [next(iterator) for _ in range(steps)]

    batches = prompts(3)
    valid = np.concatenate([b["layer_valid"] for b in batches])
    empty = np.array([[p == "" for p in row] for b in batches for row in b["prompts"]])
    assert empty[~valid].all()  # padded slots never hold a prompt
    rate = empty[valid].mean()
    assert 0.22 < rate < 0.38, rate
    again = prompts(3)
    assert [b["prompts"] for b in again] == [b["prompts"] for b in batches]
    for got, want in zip(again, batches):
        np.testing.assert_array_equal(got["boxes"], want["boxes"])
    assert [b["prompts"] for b in prompts(4)] != [b["prompts"] for b in batches]


def test_restored_iterator_state_continues_with_the_same_batches(source):
    iterator = _iterator(source, prompt_dropout=0.3)
    for _ in range(4):
        next(iterator)
    state = iterator.get_state()
    json.dumps(state)  # plain JSON, as orbax' grain handler writes it
    want = [next(iterator) for _ in range(3)]
    fresh = _iterator(source, prompt_dropout=0.3)
    fresh.set_state(state)
    for expected in want:
        _assert_same_batch(next(fresh), expected)


def test_orbax_checkpoint_manager_saves_and_restores_the_iterator(source, tmp_path):
    iterator = _iterator(source)
    for _ in range(2):
        next(iterator)
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        manager.save(
            2,
            args=ocp.args.Composite(
                params=ocp.args.StandardSave({"w": np.arange(3.0)}),
                data=grain.checkpoint.CheckpointSave(iterator),
            ),
        )
        manager.wait_until_finished()
        want = [next(iterator) for _ in range(2)]
        fresh = _iterator(source)
        restored = manager.restore(
            2,
            args=ocp.args.Composite(
                params=ocp.args.StandardRestore({"w": np.zeros(3)}),
                data=grain.checkpoint.CheckpointRestore(fresh),
            ),
        )
    np.testing.assert_array_equal(restored["params"]["w"], np.arange(3.0))
    for expected in want:
        _assert_same_batch(next(fresh), expected)


def test_eval_scenes_are_a_fixed_unaugmented_batch(synthetic_path):
    eval_source = load_source(synthetic_path, "eval")
    batch = make_eval_scenes(eval_source, max_layers=L_MAX, count=3)
    _assert_same_batch(batch, make_eval_scenes(eval_source, max_layers=L_MAX, count=3))
    _assert_same_batch(batch, collate([pad_example(eval_source[i], L_MAX) for i in range(3)]))
