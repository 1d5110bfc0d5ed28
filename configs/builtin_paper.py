"""The built-in model, paper variant (issue #15): the box model's weights as DreamLayer's
paper states it.

It starts from the box model v2's export (`configs/builtin_v2.py`; 64 text positions),
loaded as the paper variant: its parts start fresh (zero layer assign embedding, the
context-aware layers' zero head, foreground K/V copied from the shared K/V), so at step
0 it computes what the box model without boxes computes. Trained with the paper's
context-map and layout losses (weights 1, 1) besides the v-prediction loss, every
parameter trained (the paper trains K/V only because its base model is a pretrained SD;
this one is ours), with v2's learning rate and slot buckets (`tests/test_slot_buckets.py`
runs the paper losses on them). Context-aware layers sized for a 64-wide text encoder:
1 layer, width 32, 2 heads.

    python -m dreamlayer_jax.cli.init_model configs/builtin_paper.py runs/builtin_paper/init \
        --base runs/builtin_v2/export
    python train.py --config configs/builtin_paper.py --workdir runs/builtin_paper --resume

(`make builtin-paper`, after `make builtin-v2`; `V2=FOLDER` names another base.) The
shipped `builtin:paper` started from v2's step-11300 export (the one that ended on a
cooldown, `configs/builtin_v2.py`) and is this run's step-1100 export (session 11); the
one before it started from v2's step 1600 and trained 1900 steps (session 8).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from dreamlayer_jax.training.config import load_config_module

PAPER = {"variant": "paper", "context_width": 32, "context_heads": 2, "context_layers": 1}


_V2 = load_config_module(Path(__file__).with_name("builtin_v2.py"))
RESOLUTION: int = _V2.RESOLUTION

ARCHITECTURE: dict[str, Any] = copy.deepcopy(_V2.ARCHITECTURE)
ARCHITECTURE["dreamlayer"].update(PAPER)


def get_config() -> dict[str, Any]:
    return {**_V2.get_config(), "model": _V2._V1.repo_path("runs/builtin_paper/init"),
            "dreamlayer": dict(PAPER), "context_loss_weight": 1.0, "layout_loss_weight": 1.0,
            "num_steps": 1100, "end_lr_ratio": 1.0, "cooldown_steps": 0}  # constant, as run
