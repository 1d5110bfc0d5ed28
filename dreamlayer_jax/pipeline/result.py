"""`LayeredResult`: the pictures of one generated scene, and how they are saved."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dreamlayer_jax.data.compositing import preview_strip
from dreamlayer_jax.errors import OutputError
from dreamlayer_jax.io.atomic import staged_folder
from dreamlayer_jax.io.layered_files import write_ora, write_psd
from dreamlayer_jax.pipeline.scene import Scene


@dataclass
class LayeredResult:
    """Background `uint8[H, W, 3]`, foregrounds `uint8[H, W, 4]` (straight alpha) in paint
    order, the global layer `composite` `uint8[H, W, 3]`, and how they were made.

    `latents` holds the final layer latents `[L, h, w, c]` (valid slots only, slot order)
    so that the scene can be edited later in latent space.
    """

    scene: Scene
    background: np.ndarray
    layers: list[np.ndarray]
    composite: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)
    latents: np.ndarray | None = None

    def layer_names(self) -> list[str]:
        """The names of the PSD / ORA layers, background first: their prompts, so that
        even a program that drops the embedded scene keeps them readable and importable."""
        return [self.scene.background, *(layer.prompt for layer in self.scene.layers)]

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write every output into `out_dir`, atomically.

        Files: background.png, layer_01.png ... (RGBA), composite.png, scene.json,
        layers.psd, layers.ora, preview.png and latents.safetensors. They are written
        into a temporary folder beside `out_dir` and moved into place at the end, so an
        interrupted run leaves nothing half-written. An existing `out_dir` must be empty.
        """
        out = Path(out_dir)
        if out.exists() and not out.is_dir():
            raise OutputError(f"output path {str(out)!r} exists and is not a folder")
        if out.is_dir() and any(out.iterdir()):
            raise OutputError(f"output folder {str(out)!r} is not empty")
        with staged_folder(out, "results") as tmp:
            self._write_files(tmp)
        return out

    def _write_files(self, folder: Path) -> None:
        Image.fromarray(self.background).save(folder / "background.png")
        files = []
        for i, layer in enumerate(self.layers, start=1):
            name = f"layer_{i:02d}.png"
            Image.fromarray(layer, mode="RGBA").save(folder / name)
            files.append(name)
        Image.fromarray(self.composite).save(folder / "composite.png")
        record = self.scene.to_dict()
        for entry in record["layers"]:
            if entry.get("box") is not None:  # no float noise (0.09500000000000003)
                entry["box"] = [round(float(v), 6) for v in entry["box"]]
        names = self.layer_names()
        for writer, name in ((write_psd, "layers.psd"), (write_ora, "layers.ora")):
            writer(folder / name, self.background, self.layers, names, self.composite, record)
        Image.fromarray(preview_strip(self.background, self.layers, self.composite)).save(
            folder / "preview.png"
        )
        if self.latents is not None:
            from safetensors.numpy import save_file

            save_file({"latents": np.ascontiguousarray(self.latents, np.float32)},
                      str(folder / "latents.safetensors"))
        record["background"]["file"] = "background.png"
        for entry, name in zip(record["layers"], files):
            entry["file"] = name
        record["composite"] = "composite.png"
        record.update(self.info)
        known = record.pop("model_path", None)  # an edit's info carries the saved scene's
        record.update(model_record(record.get("model"), known))
        (folder / "scene.json").write_text(json.dumps(record, indent=2) + "\n")


def model_record(model: Any, known_path: str | None = None) -> dict[str, Any]:
    """scene.json's `"model"`, portable: `"builtin"` / `"builtin:paper"` ... for a
    built-in model, otherwise the path or hub id as given plus, for a local folder,
    `"model_path"` (absolute; `known_path` when the record is carried over from a saved
    scene)."""
    if not isinstance(model, str) or not model:
        return {}
    from dreamlayer_jax.pipeline.builtin import builtin_name, builtin_variant

    path = Path(model).expanduser()
    variant = builtin_variant(model)
    if variant is not None:
        return {"model": model}
    named = builtin_name(path)
    if named is not None:
        return {"model": named}
    if known_path:
        return {"model": model, "model_path": known_path}
    return {"model": model, **({"model_path": str(path.resolve())} if path.exists() else {})}
