"""The grain input pipeline: shard per host, shuffle, pad to `L_max`, flip, drop prompts,
batch. Deterministic given the seed, and resumable from the iterator's state.

    source = load_source(path, "train")
    batches = make_train_iterator(source, batch_size=8, max_layers=5, seed=0)
    batch = next(batches)                       # a TrainBatch (dreamlayer_jax.data.batch)
    state = batches.get_state()                 # a small JSON-able dict
    ... fresh = make_train_iterator(<same arguments>); fresh.set_state(state)

Order of operations (grain `MapDataset`, so every element is a pure function of its
position in the stream): this host's shard -> global shuffle -> repeat (reshuffled each
epoch) -> pad to `L_max` -> random horizontal flip and prompt dropout (a per-element
`np.random.Generator` from grain's `random_map`, seeded by the pipeline seed and the
element's position) -> batch with `drop_remainder`. Tokenization happens in the trainer.

Checkpointing with orbax: the iterator is a `grain.DatasetIterator`, and grain ships an
orbax handler with its argument classes, `grain.checkpoint.CheckpointSave` /
`CheckpointRestore`:

    import orbax.checkpoint as ocp
    manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(max_to_keep=3))
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(train_state),
        data=grain.checkpoint.CheckpointSave(batches)))
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_train_state),
        data=grain.checkpoint.CheckpointRestore(batches)))   # sets `batches`' state in place

Each host writes its own `process_<i>-of-<n>.json` inside the `data` item.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import grain
import jax
import numpy as np
from absl import flags

from dreamlayer_jax.data.batch import (
    PaddedExample,
    TrainBatch,
    check_max_layers,
    collate,
    pad_example,
)
from dreamlayer_jax.errors import ConfigError, DataError


def flip_horizontal(example: PaddedExample) -> PaddedExample:
    """Mirror every slot left-right; boxes follow: `x0' = 1 - x1`, `x1' = 1 - x0`.

    The full box of background, global and padded slots maps onto itself.
    """
    boxes = example["boxes"].copy()
    boxes[:, 0] = 1.0 - example["boxes"][:, 2]
    boxes[:, 2] = 1.0 - example["boxes"][:, 0]
    pixels = np.ascontiguousarray(example["pixels"][:, :, ::-1, :])  # [L, H, W, 4]
    return {**example, "pixels": pixels, "boxes": boxes}


def drop_prompts(example: PaddedExample, drop: np.ndarray) -> PaddedExample:
    """Replace the prompt of every slot where `drop` (bool `[L]`) is True by ""."""
    prompts = ["" if d else p for p, d in zip(example["prompts"], drop.tolist())]
    return {**example, "prompts": prompts}


@dataclasses.dataclass(frozen=True)
class Augment:
    """grain random map: flip with probability `flip_prob`, then drop each slot's prompt
    independently with probability `prompt_dropout` (classifier-free guidance).

    Always draws `1 + L` uniforms in the same order, so the decisions for an element
    depend only on its generator, not on its layer count.
    """

    flip_prob: float
    prompt_dropout: float

    def __call__(self, example: PaddedExample, rng: np.random.Generator) -> PaddedExample:
        flip = rng.random() < self.flip_prob
        drop = rng.random(len(example["prompts"])) < self.prompt_dropout
        if flip:
            example = flip_horizontal(example)
        return drop_prompts(example, drop)


def shard_slice(length: int, shard_index: int, shard_count: int) -> slice:
    """Host `shard_index`'s elements of `length`: every `shard_count`-th from
    `shard_index`, the last `length % shard_count` dropped so that all hosts get
    `length // shard_count` (hosts must run the same number of steps)."""
    if not 0 <= shard_index < shard_count:
        raise ConfigError(f"need 0 <= shard_index < shard_count, got {shard_index}, {shard_count}")
    per_shard = length // shard_count
    return slice(shard_index, per_shard * shard_count, shard_count)


def _check_probability(name: str, value: float) -> float:
    if not 0.0 <= float(value) <= 1.0:
        raise ConfigError(f"{name} must lie in [0, 1], got {value}")
    return float(value)


def make_train_dataset(
    source: Sequence[Any],
    *,
    batch_size: int,
    max_layers: int,
    seed: int,
    shard_index: int | None = None,
    shard_count: int | None = None,
    flip_prob: float = 0.5,
    prompt_dropout: float = 0.1,
    num_epochs: int | None = None,
    worker_count: int = 0,
    read_threads: int = 2,
    prefetch_batches: int = 2,
) -> grain.IterDataset:
    """The pipeline as a grain `IterDataset` of `TrainBatch`es (see `make_train_iterator`)."""
    max_layers = check_max_layers(max_layers)
    if shard_index is None:
        shard_index = jax.process_index()
    if shard_count is None:
        shard_count = jax.process_count()
    if int(batch_size) < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if not 0 <= int(seed) < 2**32:
        raise ConfigError(f"seed must lie in [0, 2**32), got {seed}")
    if num_epochs is not None and int(num_epochs) < 1:
        raise ConfigError(f"num_epochs must be >= 1 or None (forever), got {num_epochs}")
    if int(worker_count) < 0:
        raise ConfigError(f"worker_count must be >= 0, got {worker_count}")
    augment = Augment(
        _check_probability("flip_prob", flip_prob),
        _check_probability("prompt_dropout", prompt_dropout),
    )

    dataset = grain.MapDataset.source(source)
    dataset = dataset[shard_slice(len(dataset), int(shard_index), int(shard_count))]
    if len(dataset) < batch_size:
        raise DataError(
            f"host shard {shard_index} of {shard_count} holds {len(dataset)} scenes "
            f"(of {len(source)}), fewer than batch_size={batch_size}"
        )
    # One stream per host: hosts neither share shuffles nor augmentation draws.
    host_seed = int(np.random.SeedSequence([int(seed), int(shard_index)]).generate_state(1)[0])
    dataset = dataset.seed(host_seed).shuffle().repeat(num_epochs)
    dataset = dataset.map(functools.partial(pad_example, max_layers=max_layers))
    dataset = dataset.random_map(augment)
    dataset = dataset.batch(int(batch_size), drop_remainder=True, batch_fn=collate)
    iter_dataset = dataset.to_iter_dataset(
        grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch_batches)
    )
    if worker_count:
        # grain's worker start reads absl flags, which fail when unparsed (a program not
        # started by absl.app.run); unparsed flags hold their defaults, so say so.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        iter_dataset = iter_dataset.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=int(worker_count))
        )
    return iter_dataset


def make_train_iterator(
    source: Sequence[Any],
    *,
    batch_size: int,
    max_layers: int,
    seed: int,
    shard_index: int | None = None,
    shard_count: int | None = None,
    flip_prob: float = 0.5,
    prompt_dropout: float = 0.1,
    num_epochs: int | None = None,
    worker_count: int = 0,
    read_threads: int = 2,
    prefetch_batches: int = 2,
) -> grain.DatasetIterator:
    """A checkpointable iterator of `TrainBatch`es over this host's shard of `source`.

    Args:
      source: a grain RandomAccessDataSource of `SceneExample`s (`load_source(...)`).
      batch_size: scenes per batch on this host (the last partial batch is dropped).
      max_layers: `L_max`, the slots per scene (background + foregrounds + global).
      seed: the pipeline seed in `[0, 2**32)`; shuffles and augmentations follow from it.
      shard_index, shard_count: this host's shard; default `jax.process_index()` and
        `jax.process_count()`. Shards are disjoint and equally long (`shard_slice`).
      flip_prob: probability of a horizontal flip (pixels and boxes).
      prompt_dropout: probability that a slot's prompt becomes "" (independently).
      num_epochs: passes over the shard, each reshuffled; None repeats forever.
      worker_count: grain worker processes (0: threads in this process only).
      read_threads, prefetch_batches: grain `ReadOptions` (threads assembling batches,
        batches buffered ahead).

    The iterator has `get_state()` / `set_state(state)`; a fresh iterator made with the
    same arguments and given a saved state yields the same batches the original did.
    """
    dataset = make_train_dataset(
        source,
        batch_size=batch_size,
        max_layers=max_layers,
        seed=seed,
        shard_index=shard_index,
        shard_count=shard_count,
        flip_prob=flip_prob,
        prompt_dropout=prompt_dropout,
        num_epochs=num_epochs,
        worker_count=worker_count,
        read_threads=read_threads,
        prefetch_batches=prefetch_batches,
    )
    return iter(dataset)


def make_eval_scenes(
    source: Sequence[Any], *, max_layers: int, count: int | None = None
) -> TrainBatch:
    """The first `count` scenes of `source` (all by default) as one padded batch: no
    flip, no dropout, the same scenes in the same order every time (fixed eval prompts,
    ground truth for the quality measures)."""
    count = len(source) if count is None else int(count)
    if not 1 <= count <= len(source):
        raise ConfigError(f"count must lie in [1, {len(source)}], got {count}")
    return collate([pad_example(source[index], max_layers) for index in range(count)])
