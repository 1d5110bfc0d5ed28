"""The built-in box model, v2 trained on from its step-21200 export (sessions 15-18).

`configs/builtin_v2.py` ends at step 21200 on a cooldown (`make builtin-v2`). The run's
optimizer state was lost with the machine it lived on, so v2 was trained on from that
export, its EMA weights, with a fresh optimizer: the same recipe (2.5e-4 after a 50-step
warm-up, constant, EMA 0.998, 16,384 in-memory scenes, slot buckets) for 19000 steps, then
400 steps decaying the rate along a cosine to 2.5e-5 (`make builtin-v2-on`, after `make
builtin-v2`):

    python train.py --config configs/builtin_v2_on.py --workdir runs/builtin_v2_on --resume

Its export, after 21200 + 19400 steps, was `builtin:box` in session 19 (sessions 15-17
shipped the same run's branches cooled from its steps 4000, 7400 and 11400);
`configs/builtin_v2_on2.py` trains it on to the shipped one. The 19400 steps took about
six and a half hours on the 2-core CPU (0.8-1.2 s a step alone, 1.4-2.0 s beside another
job); docs/BUILTIN.md has the curve and the measures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dreamlayer_jax.training.config import load_config_module

_V1 = load_config_module(Path(__file__).with_name("builtin.py"))
_V2 = load_config_module(Path(__file__).with_name("builtin_v2.py"))
RESOLUTION: int = _V2.RESOLUTION
ARCHITECTURE: dict[str, Any] = _V2.ARCHITECTURE


def get_config() -> dict[str, Any]:
    return {**_V2.get_config(), "model": _V1.repo_path("runs/builtin_v2/export"),
            "num_steps": 19400, "cooldown_steps": 400}
