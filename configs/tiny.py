"""The tiny configuration: a small random model on in-memory synthetic scenes (CPU).

    python -m dreamlayer_jax.cli.init_model configs/tiny.py runs/tiny/init
    python train.py --config configs/tiny.py --workdir runs/tiny --set model=runs/tiny/init

`init_model` writes a small random model at `synthetic_resolution` (16 px) for it; any
DreamLayer folder of that resolution also works as `model`.
"""


def get_config() -> dict:
    return {
        "model": "",  # a model folder, e.g. one written by tests/tiny_model.py
        "synthetic_scenes": 64,
        "synthetic_resolution": 16,
        "batch_size": 4,
        "num_steps": 200,
        "learning_rate": 1e-3,
        "warmup_steps": 10,
        "ema_decay": 0.99,
        "checkpoint_every": 100,
        "log_every": 10,
        "sample_every": 100,
        "sample_steps": 5,
        "mesh": (-1, 1, 1),
    }
