"""Frozen config dataclasses read from diffusers / transformers `config.json` files."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Self

from dreamlayer_jax.errors import ConfigError


def _freeze(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


class ModelConfig:
    """Mixin for frozen config dataclasses.

    `from_dict` keeps the keys the dataclass knows (lists become tuples so that configs
    are hashable and usable as static jit arguments), drops bookkeeping keys such as
    `_class_name`, and then calls `validate(raw)` so a subclass can refuse features it
    does not implement with a `ConfigError` naming the key.
    """

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Self:
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        kwargs = {k: _freeze(v) for k, v in raw.items() if k in names}
        try:
            config = cls(**kwargs)
        except TypeError as exc:
            raise ConfigError(f"{cls.__name__}: {exc}") from exc
        config.validate(raw)
        return config

    def validate(self, raw: dict[str, Any]) -> None:
        """Raise `ConfigError` for values this implementation does not support."""

    @staticmethod
    def require(raw: dict[str, Any], key: str, allowed: tuple[Any, ...], owner: str) -> None:
        """Refuse `raw[key]` unless it is absent or one of `allowed`."""
        if key in raw and _freeze(raw[key]) not in allowed:
            raise ConfigError(f"{owner}: {key}={raw[key]!r} is not supported (allowed: {allowed})")
