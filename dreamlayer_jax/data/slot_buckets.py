"""Slot buckets: batches of scenes with alike foreground counts, padded only that far.

A model with `L_max` slots trains every scene padded to `L_max` (background,
foregrounds, empty slots, global), and the UNet runs on the empty slots too: with scenes
of 1, 2 and 3 foregrounds equally often and `L_max = 5`, a fifth of the step's compute
is padding. With buckets (`TrainConfig.slot_buckets`), each batch holds scenes of one
group of foreground counts and is padded to the group's largest count + 2 slots, so the
step sees `L` of 3, 4 or 5 (one compiled program per `L`).

Everything here is a pure function of global quantities, so every host builds the same
groups and the same schedule, and the batches of a step have the same `L` on all hosts
(their local rows form one global array):

- `bucket_groups`: the foreground counts grouped so that each group holds at least
  `min_size` scenes (a rare count shares the next larger count's group);
- `bucket_schedule`: which group step `k` draws from, a fixed pattern of `period` steps
  in which each group appears in proportion to its scenes, spread evenly;
- `BucketedBatches`: batch `k` as the right batch of its group's endless batch stream.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import grain
import numpy as np

from dreamlayer_jax.errors import DataError

MIN_SLOTS = 3  # background, one foreground slot (maybe empty), global


def bucket_groups(counts: np.ndarray, min_size: int) -> list[tuple[int, ...]]:
    """The foreground counts present in `counts` (`int[N]`, one per scene), grouped from
    the largest down: a group closes once it holds `min_size` scenes, and scenes left
    over at the small end join the last group closed. Ascending order of counts.

    DataError when all scenes together are fewer than `min_size`."""
    values, sizes = np.unique(np.asarray(counts, np.int64), return_counts=True)
    if sizes.sum() < min_size:
        raise DataError(f"{int(sizes.sum())} scenes, fewer than one batch of {min_size}")
    groups: list[list[int]] = []
    current: list[int] = []
    held = 0
    for value, size in zip(values[::-1].tolist(), sizes[::-1].tolist(), strict=True):
        current.append(value)
        held += size
        if held >= min_size:
            groups.append(current)
            current, held = [], 0
    if current:  # too few small-count scenes for a group of their own
        groups[-1].extend(current)
    return [tuple(sorted(g)) for g in reversed(groups)]


def group_slots(group: Sequence[int]) -> int:
    """Slots of a group's batches: its largest foreground count + background + global."""
    return max(MIN_SLOTS, max(group) + 2)


def bucket_schedule(sizes: Sequence[int], period: int = 64) -> np.ndarray:
    """`int[period]`: the group of each step in one period. Group `g` gets a share of the
    steps proportional to `sizes[g]` (largest remainder, at least one step each), and
    the steps are interleaved by smooth weighted round robin (no long runs of one
    group), so the pattern repeats identically every `period` steps."""
    sizes = np.asarray(sizes, np.float64)
    period = max(int(period), len(sizes))
    share = sizes / sizes.sum() * (period - len(sizes))
    quota = np.floor(share).astype(np.int64) + 1
    for g in np.argsort(-(share - np.floor(share)), kind="stable")[:period - quota.sum()]:
        quota[g] += 1
    current = np.zeros(len(sizes), np.int64)
    pattern = np.empty(period, np.int64)
    for step in range(period):
        current += quota
        g = int(np.argmax(current))
        current[g] -= period
        pattern[step] = g
    return pattern


class BucketedBatches(grain.MapDataset):
    """Batch `k` is batch `i` of `groups[g]` (each an endless `MapDataset` of batches),
    with `g = schedule[k % P]` and `i` the number of earlier steps that drew from `g`:
    a pure function of `k`, so resuming at any step gives the same batches."""

    def __init__(self, groups: Sequence[grain.MapDataset], schedule: np.ndarray) -> None:
        super().__init__(list(groups))
        self._schedule = np.asarray(schedule, np.int64)
        self._per_period = np.bincount(self._schedule, minlength=len(groups))
        if (self._per_period == 0).any():
            raise ValueError("every group must appear in the schedule")
        # rank[r]: how many of the steps before r in a period drew from r's group
        self._rank = np.array([int((self._schedule[:r] == g).sum())
                               for r, g in enumerate(self._schedule)], np.int64)

    def __len__(self) -> int:
        return sys.maxsize

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        rounds, r = divmod(int(index), len(self._schedule))
        g = int(self._schedule[r])
        return self.parents[g][rounds * int(self._per_period[g]) + int(self._rank[r])]

    def __str__(self) -> str:
        return f"BucketedBatches(groups={len(self.parents)}, period={len(self._schedule)})"
