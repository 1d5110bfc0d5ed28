"""A progress bar over denoising steps that run inside one jitted `lax.scan`.

The sampler calls `jax.debug.callback(hook.tick)` once per step; the hook object is a
static argument that stays the same for the pipeline's lifetime (no recompilation),
and `bar()` points it at a fresh tqdm bar for each call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import jax


class ProgressHook:
    """Forwards per-step ticks from compiled code to the current progress bar, if any."""

    def __init__(self) -> None:
        self._bar = None

    def tick(self, *_: object) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def step(self, i: jax.Array) -> None:
        """Call inside traced code once per step."""
        jax.debug.callback(self.tick, i)

    @contextlib.contextmanager
    def bar(self, total: int, enabled: bool = True) -> Iterator[None]:
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
