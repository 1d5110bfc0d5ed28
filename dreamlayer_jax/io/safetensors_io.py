"""Reading config.json and (sharded) safetensors files of a diffusers-style folder."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from dreamlayer_jax.errors import WeightsError
from dreamlayer_jax.io.atomic import follow_umask

_WEIGHT_NAMES = (
    "diffusion_pytorch_model.safetensors",
    "model.safetensors",
)
_INDEX_NAMES = (
    "diffusion_pytorch_model.safetensors.index.json",
    "model.safetensors.index.json",
)


def load_config(folder: str | os.PathLike, name: str = "config.json") -> dict[str, Any]:
    """Read a JSON config file from `folder`, failing with a `WeightsError` naming the file."""
    path = Path(folder) / name
    if not path.is_file():
        raise WeightsError(f"missing {name} in {str(folder)!r}")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{str(path)!r} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise WeightsError(f"{str(path)!r} must hold a JSON object")
    return config


def _read_file(path: Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"cannot read weights file {str(path)!r}: {exc}") from exc
    except TypeError as exc:  # bf16 tensors have no numpy dtype: fall back below
        if "bfloat16" not in str(exc) and "bf16" not in str(exc).lower():
            raise WeightsError(f"cannot read weights file {str(path)!r}: {exc}") from exc
    return _read_file_via_flax(path)


def _read_file_via_flax(path: Path) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    out: dict[str, np.ndarray] = {}
    with safe_open(str(path), framework="flax") as f:
        for key in f.keys():  # noqa: SIM118 - safe_open is not a dict
            out[key] = np.asarray(f.get_tensor(key))
    return out


def load_state_dict(folder: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load every tensor of the safetensors checkpoint in `folder` as numpy arrays.

    Looks for a single-file checkpoint (`diffusion_pytorch_model.safetensors` or
    `model.safetensors`), then for a sharded one described by its `*.index.json`.
    """
    folder = Path(folder)
    for name in _WEIGHT_NAMES:
        if (folder / name).is_file():
            return _read_file(folder / name)
    for name in _INDEX_NAMES:
        index_path = folder / name
        if index_path.is_file():
            index = load_config(folder, name)
            weight_map = index.get("weight_map")
            if not isinstance(weight_map, dict):
                raise WeightsError(f"{str(index_path)!r} has no 'weight_map'")
            state: dict[str, np.ndarray] = {}
            for shard in sorted(set(weight_map.values())):
                if not (folder / shard).is_file():
                    raise WeightsError(f"shard {shard!r} listed in {name} is missing")
                state.update(_read_file(folder / shard))
            missing = sorted(set(weight_map) - set(state))
            if missing:
                raise WeightsError(
                    f"tensors listed in {name} not found in its shards: {missing[:5]}"
                )
            return state
    raise WeightsError(
        f"no safetensors weights in {str(folder)!r} (expected one of "
        f"{', '.join(_WEIGHT_NAMES + _INDEX_NAMES)})"
    )


def save_state_dict(
    state: dict[str, np.ndarray], folder: str | os.PathLike, name: str = _WEIGHT_NAMES[0]
) -> Path:
    """Write `state` as one safetensors file in `folder` (created if needed), with the
    mode a plain `open()` gives (safetensors itself creates its files 0600)."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(path))
    follow_umask(path)
    return path
