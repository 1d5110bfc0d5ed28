"""The tiny configuration: a small random model on in-memory synthetic scenes (CPU).

    python train.py --config configs/tiny.py --workdir /tmp/run --set model=PATH
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
