"""`from_pretrained` / `save_pretrained` for diffusers-style model folders."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar, Self

import jax.numpy as jnp
from flax import nnx

from dreamlayer_jax.io import (
    load_config,
    load_state_dict,
    load_torch_state_into,
    nnx_state_to_torch,
    resolve_model_folder,
    save_state_dict,
)


class PretrainedMixin:
    """Mixin for `nnx.Module`s built from a config dataclass and stored like diffusers.

    A subclass sets `config_class` (a dataclass with `from_dict(dict)`), takes
    `(config, *, rngs, dtype)` in `__init__` and keeps the config as `self.config`.
    `weights_name` is the safetensors file name written by `save_pretrained`.
    """

    config_class: ClassVar[Any]
    weights_name: ClassVar[str] = "diffusion_pytorch_model.safetensors"
    ignore_keys: ClassVar[tuple[str, ...]] = ()
    torch_class_name: ClassVar[str] = ""

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        subfolder: str | None = None,
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
    ) -> Self:
        """Load config.json and safetensors weights from a local folder or a hub id.

        `dtype` is the compute dtype, `param_dtype` the dtype the parameters are kept in.
        """
        folder = resolve_model_folder(path, subfolder)
        config = cls.config_class.from_dict(load_config(folder))
        state = load_state_dict(folder)
        return load_torch_state_into(
            lambda rngs: cls(config, rngs=rngs, dtype=dtype),
            state,
            what=f"{cls.__name__} ({folder})",
            dtype=param_dtype,
            ignore=cls.ignore_keys,
        )

    def save_pretrained(
        self, folder: str | os.PathLike, include: Callable[[tuple[Any, ...]], bool] | None = None
    ) -> Path:
        """Write config.json and the weights (PyTorch layout, safetensors) to `folder`.

        `include(path)` selects the parameters to write (default: all)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = {"_class_name": self.torch_class_name or type(self).__name__,
                  **asdict(self.config)}
        (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        assert isinstance(self, nnx.Module)
        save_state_dict(nnx_state_to_torch(self, include=include), folder, self.weights_name)
        return folder
