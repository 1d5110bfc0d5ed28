"""Building a scheduler from a diffusers config dict or a `scheduler_config.json` folder."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dreamlayer_jax.errors import ConfigError, OutputError
from dreamlayer_jax.io import load_config, resolve_model_folder
from dreamlayer_jax.schedulers.base import Scheduler
from dreamlayer_jax.schedulers.config import SchedulerConfig, resolve_kind
from dreamlayer_jax.schedulers.ddim import DDIMScheduler
from dreamlayer_jax.schedulers.ddpm import DDPMScheduler
from dreamlayer_jax.schedulers.dpm_solver import DPMSolverMultistepScheduler
from dreamlayer_jax.schedulers.euler import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler

CONFIG_NAME = "scheduler_config.json"

SCHEDULERS: dict[str, type[Scheduler]] = {
    cls.kind: cls
    for cls in (
        DDIMScheduler,
        DDPMScheduler,
        EulerDiscreteScheduler,
        EulerAncestralDiscreteScheduler,
        DPMSolverMultistepScheduler,
    )
}


def scheduler_from_config(
    config: Mapping[str, Any] | SchedulerConfig, name: str | None = None, **overrides: Any
) -> Scheduler:
    """The scheduler `name` (default: the config's `_class_name`) built from `config`.

    `name` is "ddim" | "ddpm" | "euler" | "euler_a" | "dpm++2m" or a diffusers class name;
    it lets e.g. a Stable Diffusion folder's PNDM config build a DDIM scheduler (keys the
    chosen class does not read are ignored, as diffusers' `from_config` does). `overrides`
    replace config keys. Unknown names and unsupported values raise `ConfigError`.
    """
    if isinstance(config, SchedulerConfig):
        raw: dict[str, Any] = config.to_dict()
    elif isinstance(config, Mapping):
        raw = dict(config)
    else:
        raise ConfigError(f"a scheduler config must be a dict, got {type(config).__name__}")
    if name is None:
        name = raw.get("_class_name")
        if name is None:
            raise ConfigError("scheduler config has no _class_name: pass name=")
    return SCHEDULERS[resolve_kind(name)].from_config(raw, **overrides)


def load_scheduler(
    path: str | os.PathLike, name: str | None = None, *, subfolder: str | None = None
) -> Scheduler:
    """Read `scheduler_config.json` from a folder (or its `scheduler/` sub-folder)."""
    folder = resolve_model_folder(path, subfolder)
    if not (folder / CONFIG_NAME).is_file() and (folder / "scheduler" / CONFIG_NAME).is_file():
        folder = folder / "scheduler"
    return scheduler_from_config(load_config(folder, CONFIG_NAME), name)


def save_scheduler(sched: Scheduler, folder: str | os.PathLike) -> Path:
    """Write the scheduler's diffusers-style `scheduler_config.json` into `folder`."""
    path = Path(folder) / CONFIG_NAME
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(sched.config.to_dict(), indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        raise OutputError(f"cannot write {str(path)!r}: {exc}") from exc
    return path
