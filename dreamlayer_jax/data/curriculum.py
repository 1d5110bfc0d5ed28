"""The layer-count curriculum: stages of training that draw scenes with at most so many
foregrounds (`TrainConfig.curriculum`), and the batch stream that switches between them
at fixed steps (`StagedBatches`). `input_pipeline` builds one pipeline per stage."""

from __future__ import annotations

import bisect
import sys
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from dreamlayer_jax.data.batch import max_foregrounds
from dreamlayer_jax.errors import ConfigError

Curriculum = Sequence[tuple[int, int]]


def check_curriculum(curriculum: Curriculum, max_layers: int | None = None
                     ) -> tuple[tuple[int, int], ...]:
    """`curriculum` as `((start_step, max_foregrounds), ...)`; ConfigError unless the first
    stage starts at step 0, starts increase and every limit lies in `[0, L_max - 2]`
    (`[0, inf)` without `max_layers`)."""
    stages = tuple((int(start), int(limit)) for start, limit in curriculum)
    starts = [start for start, _ in stages]
    room = sys.maxsize if max_layers is None else max_foregrounds(max_layers)
    if not stages or starts[0] != 0 or any(b <= a for a, b in zip(starts, starts[1:],
                                                                  strict=False)):
        raise ConfigError(f"curriculum {stages} must start at step 0 with increasing steps")
    bad = [limit for _, limit in stages if not 0 <= limit <= room]
    if bad:
        if max_layers is None:
            raise ConfigError(f"curriculum limits {bad} must be >= 0")
        raise ConfigError(f"curriculum limits {bad} must lie in [0, {room}] (max_layers="
                          f"{max_layers} holds {room} foregrounds)")
    return stages


def count_foregrounds(source: Sequence[Any], indices: Sequence[int] | None = None
                      ) -> np.ndarray:
    """`int64[N]`: the foreground count of the scenes `indices` (default all) of `source`.

    A source may offer `foreground_counts()` (all its scenes' counts, e.g. from a stored
    `num_foregrounds` field, without decoding pixels); otherwise each scene is read once.
    """
    indices = np.arange(len(source)) if indices is None else np.asarray(indices, np.int64)
    fast = getattr(source, "foreground_counts", None)
    if callable(fast):
        return np.asarray(fast(), np.int64)[indices]
    return np.array([len(source[int(i)]["layer_prompts"]) for i in indices], np.int64)


class SubsetSource:
    """The scenes `indices` of `source`, as a random-access source (picklable)."""

    def __init__(self, source: Sequence[Any], indices: np.ndarray) -> None:
        self.source, self.indices = source, np.asarray(indices, np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Any:
        return self.source[int(self.indices[index])]


class StagedBatches(grain.MapDataset):
    """Batch `k` is batch `k - starts[s]` of `stages[s]`, `s` the last stage with
    `starts[s] <= k` (each stage an endless `MapDataset` of batches)."""

    def __init__(self, stages: Sequence[grain.MapDataset], starts: Sequence[int]) -> None:
        super().__init__(list(stages))
        self._starts = tuple(int(s) for s in starts)

    def __len__(self) -> int:
        return sys.maxsize

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        stage = bisect.bisect_right(self._starts, index) - 1
        return self.parents[stage][index - self._starts[stage]]

    def __str__(self) -> str:
        return f"StagedBatches(starts={self._starts})"
