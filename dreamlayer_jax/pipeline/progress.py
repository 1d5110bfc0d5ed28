"""A progress bar over denoising steps that run inside one jitted `lax.scan`.

The sampler calls `jax.debug.callback(hook.tick)` once per step; the hook object is a
static argument that stays the same for the pipeline's lifetime (no recompilation),
and `bar()` points it at a fresh tqdm bar for each call. `listen(fn)` also calls
`fn(done, total)` after each step (the browser app's progress bar); an exception `fn`
raises stops the sampler between steps (it reaches the caller wrapped in JAX's runtime
error), which is how a caller cancels a run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import jax


class ProgressHook:
    """Forwards per-step ticks from compiled code to the current progress bar, if any."""

    def __init__(self) -> None:
        self._bar = None
        self._listeners: list[Callable[[int, int], None]] = []
        self._done = self._total = 0

    def tick(self, *_: object) -> None:
        self._done += 1
        if self._bar is not None:
            self._bar.update(1)
        for fn in tuple(self._listeners):
            fn(self._done, self._total)

    @contextlib.contextmanager
    def listen(self, fn: Callable[[int, int], None]) -> Iterator[None]:
        """Call `fn(steps done, steps in this run)` after every step while inside."""
        self._listeners.append(fn)
        try:
            yield
        finally:
            self._listeners.remove(fn)

    def step(self, i: jax.Array) -> None:
        """Call inside traced code once per step."""
        jax.debug.callback(self.tick, i)

    @contextlib.contextmanager
    def bar(self, total: int, enabled: bool = True) -> Iterator[None]:
        self._done, self._total = 0, total
        if not enabled:
            yield
            return
        from tqdm import tqdm

        self._bar = tqdm(total=total, desc="denoising", unit="step", leave=False)
        try:
            yield
            jax.effects_barrier()
        finally:
            self._bar.close()
            self._bar = None
