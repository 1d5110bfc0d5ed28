"""The built-in models: small DreamLayer models trained by this project, in the package.

One folder per variant under `dreamlayer_jax/builtin/` (`box/`, `paper/`), named on the
command line and in scene.json as `builtin` (the default variant: the one that measures
better in docs/RESULTS.md), `builtin:box` or `builtin:paper`. A folder of such a name in
the working directory wins over the built-in model, as any path does.
"""

from __future__ import annotations

import os
from pathlib import Path

from dreamlayer_jax.errors import InputError

PREFIX = "builtin"
VARIANTS = ("box", "paper")
DEFAULT_VARIANT = "box"  # docs/RESULTS.md: the variant `builtin` names


def builtin_root() -> Path:
    """`dreamlayer_jax/builtin/`, the folder of every built-in variant."""
    return Path(__file__).resolve().parent.parent / "builtin"


def builtin_model_path(variant: str | None = None) -> Path:
    """The folder of one built-in variant (None: the default)."""
    variant = variant or DEFAULT_VARIANT
    if variant not in VARIANTS:
        raise InputError(f"unknown built-in model {PREFIX}:{variant}: choose one of "
                         + ", ".join(f"{PREFIX}:{v}" for v in VARIANTS))
    return builtin_root() / variant


def builtin_variant(model: str | os.PathLike | None) -> str | None:
    """The variant a model name picks (`None` -> the default, `"builtin"`,
    `"builtin:box"`, `"builtin:paper"`), or None when `model` names something else
    (also when a folder of that name is in the working directory)."""
    if model is None:
        return DEFAULT_VARIANT
    name = str(model)
    if name != PREFIX and not name.startswith(PREFIX + ":") or Path(name).exists():
        return None
    variant = name.partition(":")[2] or DEFAULT_VARIANT
    builtin_model_path(variant)  # an unknown variant fails here, naming the choices
    return variant


def bundled_builtin(variant: str) -> Path:
    """`builtin_model_path(variant)`, failing in one line if this version lacks it."""
    path = builtin_model_path(variant)
    if not (path / "model_index.json").is_file():
        raise InputError(f"the built-in model {PREFIX}:{variant} is not bundled with this "
                         "version: pass a model folder with --model")
    return path


def builtin_name(path: str | os.PathLike) -> str | None:
    """How scene.json records a built-in folder (`"builtin"` for the default variant,
    `"builtin:paper"` ...), or None for any other folder."""
    path = Path(path).expanduser()
    if not path.is_dir():
        return None
    for variant in VARIANTS:
        if path.resolve() == builtin_model_path(variant):
            return PREFIX if variant == DEFAULT_VARIANT else f"{PREFIX}:{variant}"
    return None
