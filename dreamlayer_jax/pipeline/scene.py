"""`Scene` and `Layer`: what a user asks the DreamLayer pipeline for.

Boxes are optional. A box-variant model (`DreamLayerConfig.variant == "box"`) places
every foreground in its box and refuses a foreground without one; a paper-variant model
needs none (it finds where each object goes from its context map), and a box given to it
is a prior on that map: the map is multiplied by the box's soft mask. The global prompt
is optional too: left empty it is composed from the layers, in the words the synthetic
data uses (`"<fg 1> and <fg 2> in front of <background>"`). The paper variant's global
layer ignores it anyway: it reads the layers' prompts, concatenated.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dreamlayer_jax.data.scene import validate_box
from dreamlayer_jax.data.synthetic_vocab import global_prompt
from dreamlayer_jax.errors import InputError

Box = tuple[float, float, float, float]
FULL_BOX: Box = (0.0, 0.0, 1.0, 1.0)


@dataclass(frozen=True)
class Layer:
    """One transparent foreground: its prompt and, optionally, its box `(x0, y0, x1, y1)`
    in [0, 1] (None: no box given; see the module docstring)."""

    prompt: str
    box: Box | None = None


@dataclass(frozen=True)
class Scene:
    """A global prompt, a background prompt and foregrounds in paint order (bottom first).

    `Scene(prompt, background, layers)` positionally, or `Scene(background=...,
    layers=...)` with the global prompt composed from the layers (`compose_prompt`): an
    empty `prompt` is replaced by the composed one.
    """

    prompt: str = ""
    background: str = ""
    layers: tuple[Layer, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))
        _check_prompt(self.background, "background")
        for i, layer in enumerate(self.layers, start=1):
            if not isinstance(layer, Layer):
                raise InputError(f"layers[{i}] must be a Layer, got {type(layer).__name__}")
            _check_prompt(layer.prompt, f"layer {i} prompt")
            if layer.box is not None:
                object.__setattr__(layer, "box",
                                   validate_box(layer.box, f"layer {i} box", InputError))
        if self.prompt is None or (isinstance(self.prompt, str) and not self.prompt.strip()):
            object.__setattr__(self, "prompt", compose_prompt(self.background, self.layers))
        _check_prompt(self.prompt, "prompt")

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

    @property
    def boxless(self) -> list[int]:
        """The 1-based indices of the foregrounds given without a box."""
        return [i for i, layer in enumerate(self.layers, start=1) if layer.box is None]

    def to_dict(self) -> dict[str, Any]:
        """The `scene.json` layout; a layer without a box has no "box" entry."""
        layers = []
        for layer in self.layers:
            entry: dict[str, Any] = {"prompt": layer.prompt}
            if layer.box is not None:
                entry["box"] = list(layer.box)
            layers.append(entry)
        return {"prompt": self.prompt, "background": {"prompt": self.background},
                "layers": layers}

    @classmethod
    def from_dict(cls, raw: Any, source: str = "scene") -> Scene:
        """Read the `scene.json` layout (files optional; "prompt" and each layer's "box"
        optional too); errors name the missing field."""
        if not isinstance(raw, dict):
            raise InputError(f"{source}: expected a JSON object")
        try:
            background = raw["background"]
            background = background["prompt"] if isinstance(background, dict) else background
            layers = [Layer(str(l["prompt"]), l.get("box")) for l in raw.get("layers", [])]
        except KeyError as exc:
            raise InputError(f"{source}: missing field {exc.args[0]!r}") from exc
        except (TypeError, AttributeError) as exc:
            raise InputError(f"{source}: malformed layers: {exc}") from exc
        return cls(prompt=raw.get("prompt") or "", background=background, layers=tuple(layers))

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


def compose_prompt(background: str, layers: tuple[Layer, ...] | list[Layer]) -> str:
    """The global prompt of a scene given without one, as the synthetic data words it:
    `"<fg 1> and <fg 2> in front of <background>"` (the background alone if no layer)."""
    return global_prompt([layer.prompt.strip() for layer in layers], background.strip())


def _check_prompt(text: Any, name: str) -> None:
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"{name} must be a non-empty string")
