"""`Scene` and `Layer`: what a user asks the DreamLayer pipeline for."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dreamlayer_jax.data.scene import validate_box
from dreamlayer_jax.errors import InputError

Box = tuple[float, float, float, float]
FULL_BOX: Box = (0.0, 0.0, 1.0, 1.0)


@dataclass(frozen=True)
class Layer:
    """One transparent foreground: its prompt and box `(x0, y0, x1, y1)` in [0, 1]."""

    prompt: str
    box: Box = FULL_BOX


@dataclass(frozen=True)
class Scene:
    """A global prompt, a background prompt and foregrounds in paint order (bottom first)."""

    prompt: str
    background: str
    layers: tuple[Layer, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))
        _check_prompt(self.prompt, "prompt")
        _check_prompt(self.background, "background")
        for i, layer in enumerate(self.layers, start=1):
            if not isinstance(layer, Layer):
                raise InputError(f"layers[{i}] must be a Layer, got {type(layer).__name__}")
            _check_prompt(layer.prompt, f"layer {i} prompt")
            object.__setattr__(layer, "box", validate_box(layer.box, f"layer {i} box", InputError))

    def check_fits(self, max_foregrounds: int) -> None:
        """Refuse more foregrounds than the model's `L_max - 2`."""
        if len(self.layers) > max_foregrounds:
            raise InputError(
                f"the scene has {len(self.layers)} foreground layers but the model supports at "
                f"most {max_foregrounds}"
            )

    @property
    def prompts(self) -> list[str]:
        """Prompts in slot order: background, foregrounds, global."""
        return [self.background, *(layer.prompt for layer in self.layers), self.prompt]

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "background": {"prompt": self.background},
            "layers": [{"prompt": l.prompt, "box": list(l.box)} for l in self.layers],
        }

    @classmethod
    def from_dict(cls, raw: Any, source: str = "scene") -> Scene:
        """Read the `scene.json` layout (files optional); errors name the missing field."""
        if not isinstance(raw, dict):
            raise InputError(f"{source}: expected a JSON object")
        try:
            background = raw["background"]
            background = background["prompt"] if isinstance(background, dict) else background
            layers = [Layer(str(l["prompt"]), tuple(l.get("box", FULL_BOX)))
                      for l in raw.get("layers", [])]
            return cls(prompt=raw["prompt"], background=background, layers=tuple(layers))
        except KeyError as exc:
            raise InputError(f"{source}: missing field {exc.args[0]!r}") from exc
        except (TypeError, AttributeError) as exc:
            raise InputError(f"{source}: malformed layers: {exc}") from exc

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> Scene:
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise InputError(f"cannot read scene file {str(path)!r}: {exc.strerror}") from exc
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"scene file {str(path)!r} is not valid JSON: {exc}") from exc
        return cls.from_dict(raw, source=str(path))


def _check_prompt(text: Any, name: str) -> None:
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"{name} must be a non-empty string")
