"""Resolving `path_or_hub_id` to a local diffusers-style folder."""

from __future__ import annotations

import os
from pathlib import Path

from dreamlayer_jax.errors import WeightsError


def resolve_model_folder(path_or_id: str | os.PathLike, subfolder: str | None = None) -> Path:
    """Return the local folder holding a model (and its `subfolder`, if given).

    A path that exists locally is used as is. Anything else that looks like a hub id
    (`owner/name`) is fetched with `huggingface_hub.snapshot_download` (config, json
    and safetensors files only); without a network that fails with a `WeightsError`.
    """
    path = Path(path_or_id).expanduser()
    if path.exists():
        if not path.is_dir():
            raise WeightsError(f"model path {str(path)!r} is a file, expected a folder")
        folder = path / subfolder if subfolder else path
        if not folder.is_dir():
            raise WeightsError(f"model folder {str(path)!r} has no {subfolder!r} sub-folder")
        return folder
    text = str(path_or_id)
    if text.count("/") != 1 or text.startswith((".", "/", "~")):
        raise WeightsError(f"model folder {text!r} does not exist")
    try:
        from huggingface_hub import snapshot_download

        patterns = ["*.json", "*.txt", "*.safetensors", "*.model"]
        if subfolder:
            patterns = [f"{subfolder}/{p}" for p in patterns] + ["model_index.json"]
        local = Path(snapshot_download(text, allow_patterns=patterns))
    except Exception as exc:  # noqa: BLE001 - any hub failure becomes one clear message
        raise WeightsError(
            f"{text!r} is not a local folder and could not be fetched from the hub: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    return resolve_model_folder(local, subfolder)
