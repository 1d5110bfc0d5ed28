"""Training logs: TensorBoard scalars and images (`training.events`), a tqdm bar,
sample grids as PNG (one row per scene, a header naming the columns)."""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from dreamlayer_jax.training.events import EventWriter

SCALARS = ("loss", "grad_norm", "lr", "steps_per_second", "skipped",
           "seconds_per_step", "examples_per_second", "tflops_per_device", "mfu",
           # the batch's mean timestep (a `timestep_focus` shows in it), the loss terms
           # and the paper variant's prompt-overflow count, where present
           "t_mean", "loss_noise", "loss_context", "loss_layout", "prompt_overflow")


def over_checkerboard(rgba: np.ndarray, cell: int = 4) -> np.ndarray:
    """`uint8[H, W, 3]`: an RGBA layer shown over a grey checkerboard."""
    h, w = rgba.shape[:2]
    yy, xx = np.mgrid[:h, :w]
    board = np.where(((yy // cell + xx // cell) % 2)[..., None] == 0, 200.0, 140.0)
    alpha = rgba[..., 3:4].astype(np.float32) / 255.0
    return (rgba[..., :3] * alpha + board * (1.0 - alpha) + 0.5).astype(np.uint8)


def layer_grid(results: Sequence[Any]) -> np.ndarray:
    """`uint8[rows*H, cols*W, 3]`: one row per scene: background, foregrounds, global."""
    rows = []
    for r in results:
        tiles = [r.background, *(over_checkerboard(layer) for layer in r.layers), r.composite]
        rows.append(tiles)
    cols = max(len(t) for t in rows)
    h, w = rows[0][0].shape[:2]
    grid = np.zeros((len(rows) * h, cols * w, 3), np.uint8)
    for i, tiles in enumerate(rows):
        for j, tile in enumerate(tiles):
            grid[i * h:(i + 1) * h, j * w:(j + 1) * w] = tile[..., :3]
    return grid


LABEL_HEIGHT = 14  # pixels of the header row naming the columns
MIN_TILE = 64  # small models' tiles are enlarged (nearest) so that the labels fit


def labelled_grid(results: Sequence[Any]) -> np.ndarray:
    """`layer_grid` with a header row naming its columns (background, layer 1 ...,
    global), tiles enlarged to at least `MIN_TILE` pixels."""
    from PIL import ImageDraw

    grid = layer_grid(results)
    h, w = results[0].background.shape[:2]
    zoom = max(1, -(-MIN_TILE // min(h, w)))
    grid = np.repeat(np.repeat(grid, zoom, axis=0), zoom, axis=1)
    cols = grid.shape[1] // (w * zoom)
    names = ["background", *(f"layer {i}" for i in range(1, cols - 1)), "global"]
    header = Image.new("RGB", (grid.shape[1], LABEL_HEIGHT), (32, 32, 32))
    draw = ImageDraw.Draw(header)
    for j, name in enumerate(names):
        draw.text((j * w * zoom + 3, 1), name, fill=(230, 230, 230))
    return np.concatenate([np.asarray(header), grid], axis=0)


class _NoBar:
    def update(self, n: int) -> None: ...
    def set_postfix(self, **kw: Any) -> None: ...
    def close(self) -> None: ...


class MetricsLogger:
    """Writes under `workdir/tensorboard` and `workdir/samples` (process 0 only).

    Logs are not worth a run: when a write fails (disk full, folder gone) the logger
    warns once and stops logging, and training goes on (checkpoints report their own
    failures).
    """

    def __init__(self, workdir: str | os.PathLike, enabled: bool = True):
        self.workdir, self.enabled = Path(workdir), enabled
        self.writer = None
        if enabled:
            self.writer = EventWriter(self.workdir / "tensorboard")

    def _failed(self, exc: OSError) -> None:
        writer, self.writer = self.writer, None
        with contextlib.suppress(OSError):  # the warning's own stream may be the full disk
            warnings.warn(f"TensorBoard logging in {self.workdir} stopped: {exc}",
                          stacklevel=3)
            writer.close()

    def progress(self, start: int, total: int, enabled: bool = True, stream: Any = None):
        """A tqdm bar on `stream` (default: stderr)."""
        if not (enabled and self.enabled):
            return _NoBar()
        return tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True,
                    file=stream)

    def scalars(self, step: int, metrics: Mapping[str, Any]) -> None:
        if self.writer is None:
            return
        try:
            for name in SCALARS:
                if name in metrics:
                    self.writer.scalar(f"train/{name}", float(metrics[name]), step)
            self.writer.flush()
        except OSError as exc:
            self._failed(exc)

    def sample_grid(self, step: int, results: Sequence[Any]) -> Path | None:
        if self.writer is None:
            return None
        grid = labelled_grid(results)
        path = self.workdir / "samples" / f"step_{step:08d}.png"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(grid).save(path)
            self.writer.image("samples/layers", grid, step)
            self.writer.flush()
        except OSError as exc:
            self._failed(exc)
            return None
        return path

    def close(self) -> None:
        if self.writer is not None:
            try:
                self.writer.close()
            except OSError as exc:
                self._failed(exc)
