"""Orbax checkpoints of a run: the train state (sharded arrays), the data iterator's
state (JSON) and run metadata, saved together, asynchronously, keeping the last N.

Restoring takes the *target* shardings (`abstract_state`), so a checkpoint written on
one mesh restores onto another.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from dreamlayer_jax.errors import CheckpointError

STATE, DATA, META = "state", "data", "meta"


class Checkpointer:
    """A thin wrapper of `ocp.CheckpointManager` over `workdir/checkpoints`."""

    def __init__(self, workdir: str | os.PathLike, *, keep: int = 3, async_save: bool = True):
        self.directory = Path(workdir).absolute() / "checkpoints"
        options = ocp.CheckpointManagerOptions(
            max_to_keep=int(keep), create=True, enable_async_checkpointing=bool(async_save))
        try:
            self.manager = ocp.CheckpointManager(
                self.directory, options=options, item_names=(STATE, DATA, META))
        except Exception as exc:
            raise CheckpointError(f"cannot open checkpoints in {self.directory}: {exc}") from exc

    def latest_step(self) -> int | None:
        """The latest *complete* checkpoint's step (unfinished saves are not listed)."""
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_state: dict[str, Any],
             meta: dict[str, Any] | None = None) -> None:
        """Start saving (returns before the write ends when async)."""
        try:
            self.manager.save(int(step), args=ocp.args.Composite(**{
                STATE: ocp.args.StandardSave(state),
                DATA: ocp.args.JsonSave(data_state),
                META: ocp.args.JsonSave(meta or {})}))
        except Exception as exc:
            raise CheckpointError(f"saving checkpoint {step} in {self.directory} failed: "
                                  f"{exc}") from exc

    def restore(self, abstract_state: Any, step: int | None = None
                ) -> tuple[int, Any, dict[str, Any], dict[str, Any]]:
        """(step, state, data_state, meta) of `step` (default: the latest), the state laid
        out as `abstract_state` (`jax.ShapeDtypeStruct`s carrying target shardings)."""
        step = self.latest_step() if step is None else int(step)
        if step is None:
            raise CheckpointError(f"no complete checkpoint in {self.directory} to resume from")
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(**{
                STATE: ocp.args.StandardRestore(abstract_state),
                DATA: ocp.args.JsonRestore(), META: ocp.args.JsonRestore()}))
        except Exception as exc:
            raise CheckpointError(f"checkpoint {step} in {self.directory} cannot be restored "
                                  f"(unreadable, or made for another model/config): "
                                  f"{' '.join(str(exc).split())[:300]}") from exc
        return step, out[STATE], dict(out[DATA] or {}), dict(out[META] or {})

    def wait(self) -> None:
        """Block until pending async saves are on disk; a failed background write (disk
        full, permissions) surfaces here as a CheckpointError. The failed step is never
        finalised, so `latest_step()` still names the previous complete checkpoint."""
        try:
            self.manager.wait_until_finished()
        except Exception as exc:
            raise CheckpointError(f"writing a checkpoint in {self.directory} failed "
                                  f"(disk full or not writable?); the previous complete "
                                  f"checkpoint is kept: {' '.join(str(exc).split())[:200]}"
                                  ) from exc

    def close(self) -> None:
        """Wait for pending saves, then close; the first failure is one CheckpointError
        (orbax re-raises a failed background write on close too: never let that raw
        error replace the CheckpointError `wait` made of it)."""
        error = None
        try:
            self.wait()
        except CheckpointError as exc:
            error = exc
        try:
            self.manager.close()
        except Exception as exc:  # noqa: BLE001 - orbax's own errors, re-worded
            error = error or CheckpointError(f"closing the checkpoints in {self.directory} "
                                             f"failed: {' '.join(str(exc).split())[:200]}")
        if error is not None:
            raise error


def abstract_like(state: Any, shardings: Any) -> Any:
    """`ShapeDtypeStruct`s of `state`'s leaves with the given target shardings."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        state, shardings)
