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

Curriculum by layer count (`curriculum=((0, 1), (60_000, 3))`: scenes with 1
foreground until step 60k, then up to 3): each stage is the pipeline above over the
host's scenes within its limit (own shuffle, seeded by the seed, host and stage), and
batch `k` comes from the stage that step `k` falls in, as that stage's batch `k - start`
(`StagedBatches`). Every batch is still a pure function of its position, so the stage
switch happens at the same step however often the run was resumed, and the iterator's
state (its next position) resumes exactly on either side of it. `L_max` stays fixed:
the batches' shapes never change, and the train step compiles once.

Slot buckets (`slot_buckets=True`, `data.slot_buckets`): each batch holds scenes of one
group of foreground counts, padded to that group's largest count + 2 slots instead of
`L_max`, so no compute goes to slots that every scene of the batch leaves empty; the
step compiles once per group. Which group step `k` draws from is a fixed pattern, so
batches stay a pure function of their position and resume exactly.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
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
    max_foregrounds,
    pad_example,
)
from dreamlayer_jax.data.curriculum import (
    Curriculum,
    StagedBatches,
    SubsetSource,
    check_curriculum,
    count_foregrounds,
)
from dreamlayer_jax.data.slot_buckets import (
    BucketedBatches,
    bucket_groups,
    bucket_schedule,
    group_slots,
)
from dreamlayer_jax.errors import ConfigError, DataError


def flip_boxes(boxes: np.ndarray) -> np.ndarray:
    """Boxes `[..., 4]` of the mirrored picture: `x0' = 1 - x1`, `x1' = 1 - x0`."""
    out = boxes.copy()
    out[..., 0] = 1.0 - boxes[..., 2]
    out[..., 2] = 1.0 - boxes[..., 0]
    return out


def flip_horizontal(example: PaddedExample) -> PaddedExample:
    """Mirror every slot left-right; boxes follow (`flip_boxes`).

    The full box of background, global and padded slots maps onto itself.
    """
    boxes = flip_boxes(example["boxes"])
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

    def draw(self, rng: np.random.Generator, num_slots: int) -> tuple[bool, np.ndarray]:
        """`(flip, drop bool[L])` for one element (the latent cache applies the same)."""
        flip = bool(rng.random() < self.flip_prob)
        return flip, rng.random(num_slots) < self.prompt_dropout

    def __call__(self, example: PaddedExample, rng: np.random.Generator) -> PaddedExample:
        flip, drop = self.draw(rng, len(example["prompts"]))
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


def element_ops(source: Sequence[Any], augment: Augment) -> tuple[Callable, Callable, Callable]:
    """`(pad, augment, collate)` of `source`'s elements: scenes (`pad_example`, `augment`,
    `collate`), or what the source says (`pipeline_ops`, e.g. `data.latent_cache`)."""
    ops = getattr(source, "pipeline_ops", None)
    return ops(augment) if callable(ops) else (pad_example, augment, collate)


def _batches(dataset: grain.MapDataset, seed: int, num_epochs: int | None, max_layers: int,
             ops: tuple[Callable, Callable, Callable], batch_size: int) -> grain.MapDataset:
    """shuffle -> repeat -> pad to `L_max` -> augment -> batch."""
    pad, augment, batch_fn = ops
    dataset = dataset.seed(seed).shuffle().repeat(num_epochs)
    dataset = dataset.map(functools.partial(pad, max_layers=max_layers))
    dataset = dataset.random_map(augment)
    return dataset.batch(int(batch_size), drop_remainder=True, batch_fn=batch_fn)


def _stage_datasets(source: Sequence[Any], host: slice, stages: tuple[tuple[int, int], ...],
                    counts: np.ndarray | None, seed: int, shard_index: int,
                    batch_size: int, max_layers: int,
                    ops: tuple[Callable, Callable, Callable]) -> StagedBatches:
    """The curriculum's batches: one pipeline per stage over the host's fitting scenes."""
    host_indices = np.arange(len(source))[host]
    counts = (count_foregrounds(source, host_indices) if counts is None
              else np.asarray(counts, np.int64)[host_indices])
    parts = []
    for number, (start, limit) in enumerate(stages):
        picked = host_indices[counts <= limit]
        if len(picked) < batch_size:
            raise DataError(
                f"curriculum stage {number} (from step {start}, at most {limit} foregrounds): "
                f"host shard {shard_index} holds {len(picked)} such scenes, fewer than "
                f"batch_size={batch_size}")
        stage_seed = int(np.random.SeedSequence([seed, shard_index, number + 1])
                         .generate_state(1)[0])
        parts.append(_batches(grain.MapDataset.source(SubsetSource(source, picked)),
                              stage_seed, None, max_layers, ops, batch_size))
    return StagedBatches(parts, [start for start, _ in stages])


def _bucket_datasets(source: Sequence[Any], host: slice, counts: np.ndarray | None,
                     seed: int, shard_index: int, shard_count: int, batch_size: int,
                     max_layers: int, ops: tuple[Callable, Callable, Callable]
                     ) -> BucketedBatches:
    """Slot buckets: groups and schedule from all hosts' scenes (the same everywhere), one
    pipeline per group over this host's scenes, padded to the group's slots."""
    counts = (count_foregrounds(source) if counts is None
              else np.asarray(counts, np.int64))
    room = max_foregrounds(max_layers)
    if counts.max() > room:
        raise DataError(f"{int((counts > room).sum())} scenes have more than {room} "
                        f"foregrounds (max_layers={max_layers})")
    host_indices = np.arange(len(source))[host]
    groups = bucket_groups(counts, batch_size * shard_count)
    parts, sizes = [], []
    for number, group in enumerate(groups):
        picked = host_indices[np.isin(counts[host_indices], group)]
        if len(picked) < batch_size:
            raise DataError(f"slot bucket of {list(group)} foregrounds: host shard "
                            f"{shard_index} holds {len(picked)} such scenes, fewer than "
                            f"batch_size={batch_size}")
        group_seed = int(np.random.SeedSequence([seed, shard_index, 1000 + number])
                         .generate_state(1)[0])
        parts.append(_batches(grain.MapDataset.source(SubsetSource(source, picked)),
                              group_seed, None, group_slots(group), ops, batch_size))
        sizes.append(int(np.isin(counts, group).sum()))
    return BucketedBatches(parts, bucket_schedule(sizes))


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
    curriculum: Curriculum = (),
    foreground_counts: np.ndarray | None = None,
    slot_buckets: bool = False,
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

    host = shard_slice(len(source), int(shard_index), int(shard_count))
    if (curriculum or slot_buckets) and num_epochs is not None:
        raise ConfigError(f"a curriculum and slot buckets repeat their scenes: num_epochs "
                          f"must be None, got {num_epochs}")
    if curriculum and slot_buckets:
        raise ConfigError("a curriculum and slot buckets do not combine: use one")
    if slot_buckets:
        dataset = _bucket_datasets(source, host, foreground_counts, int(seed),
                                   int(shard_index), int(shard_count), int(batch_size),
                                   max_layers, element_ops(source, augment))
    elif curriculum:
        dataset = _stage_datasets(source, host, check_curriculum(curriculum, max_layers),
                                  foreground_counts, int(seed), int(shard_index),
                                  int(batch_size), max_layers, element_ops(source, augment))
    else:
        dataset = grain.MapDataset.source(source)[host]
        if len(dataset) < batch_size:
            raise DataError(
                f"host shard {shard_index} of {shard_count} holds {len(dataset)} scenes "
                f"(of {len(source)}), fewer than batch_size={batch_size}"
            )
        # One stream per host: hosts neither share shuffles nor augmentation draws.
        host_seed = int(np.random.SeedSequence([int(seed), int(shard_index)])
                        .generate_state(1)[0])
        dataset = _batches(dataset, host_seed, num_epochs, max_layers,
                           element_ops(source, augment), batch_size)
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
    curriculum: Curriculum = (),
    foreground_counts: np.ndarray | None = None,
    slot_buckets: bool = False,
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
      curriculum: `((start_step, max_foregrounds), ...)` stages, the first at step 0
        (batch `k` is step `k`'s); () draws from every scene (module docstring).
      foreground_counts: `int[len(source)]` each scene's foreground count, if known
        (else counted with `count_foregrounds`, which reads the host's scenes once, or
        with `slot_buckets` every scene once).
      slot_buckets: batches of alike foreground counts padded to their group's slots
        instead of `max_layers` (module docstring); their `L` varies between batches.

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
        curriculum=curriculum,
        foreground_counts=foreground_counts,
        slot_buckets=slot_buckets,
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
    pad, _, batch_fn = element_ops(source, Augment(0.0, 0.0))
    return batch_fn([pad(source[index], max_layers) for index in range(count)])
