"""The built-in box model, v2 trained on from its step-40600 export (session 20).

`configs/builtin_v2_on.py` ends at v2 step 40600 on a cooldown (`make builtin-v2-on`):
`builtin:box` from session 19. The constant-rate run behind it was lost with the machine
it lived on, so session 20 trained on from that export, its EMA weights, with a fresh
optimizer, as session 15 had from step 21200: the same recipe (2.5e-4 after a 50-step
warm-up, constant, EMA 0.998, 16,384 in-memory scenes, slot buckets) for 5400
steps, then 400 steps decaying the rate along a cosine to 2.5e-5 (`make builtin-v2-on2`,
after `make builtin-v2-on`):

    python train.py --config configs/builtin_v2_on2.py --workdir runs/builtin_v2_on2 --resume

Its export, after 40600 + 5800 steps (v2 step 46400), is the shipped `builtin:box`. The
5800 steps took about 100 minutes on the 2-core CPU (about 1.1 s a step, alone);
docs/BUILTIN.md has the curve and the measures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dreamlayer_jax.training.config import load_config_module

_V1 = load_config_module(Path(__file__).with_name("builtin.py"))
_ON = load_config_module(Path(__file__).with_name("builtin_v2_on.py"))
RESOLUTION: int = _ON.RESOLUTION
ARCHITECTURE: dict[str, Any] = _ON.ARCHITECTURE


def get_config() -> dict[str, Any]:
    return {**_ON.get_config(), "model": _V1.repo_path("runs/builtin_v2_on/export"),
            "num_steps": 5800}
