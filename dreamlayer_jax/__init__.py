"""dreamlayer-jax: DreamLayer (ICCV 2025) multi-layer image generation in JAX / Flax NNX.

    from dreamlayer_jax import DreamLayerPipeline, Scene, Layer
    pipe = DreamLayerPipeline.from_pretrained()          # the built-in model
    result = pipe(Scene(prompt=..., background=..., layers=[Layer(..., box=...)]))
    result.save("out/")

The names are imported lazily, so `import dreamlayer_jax.errors` (or the data tools)
does not pay for JAX and the models. Importing the package appends this project's XLA CPU
flags to `XLA_FLAGS` while JAX's backends are not started yet (`dreamlayer_jax.xla_flags`;
`DREAMLAYER_XLA_FLAGS=0` opts out).
"""

from __future__ import annotations

import importlib
from typing import Any

from dreamlayer_jax.xla_flags import apply_default_xla_flags

__version__ = "0.1.0"
apply_default_xla_flags()

_EXPORTS = {
    "DreamLayerPipeline": "dreamlayer_jax.pipeline.dreamlayer",
    "LayeredResult": "dreamlayer_jax.pipeline.result",
    "Layer": "dreamlayer_jax.pipeline.scene",
    "Scene": "dreamlayer_jax.pipeline.scene",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'dreamlayer_jax' has no attribute {name!r}")
