"""Fine-tune Stable Diffusion 1.5 into DreamLayer at 512 px (LoRA + role embedding).

    python train.py --config configs/sd15.py --workdir runs/sd15 \\
        --set model=/path/to/stable-diffusion-v1-5 data_dir=/path/to/dataset

`model` is a diffusers SD 1.5 folder: `dreamlayer` adds rank-32 LoRA adapters and the
zero-initialised role embedding on top of the frozen weights (a DreamLayer folder whose
adapters have another rank is refused). Train the transparency decoder first
(`mode="transparency"`) for RGBA layers.
"""


def get_config() -> dict:
    return {
        "model": "",  # path to the SD 1.5 folder (set with --set model=...)
        "data_dir": "",  # a TFDS dataset built by dreamlayer_jax.data.tfds_builder
        "dreamlayer": {"lora_rank": 32, "lora_alpha": 32.0},
        "batch_size": 32,
        "num_steps": 50_000,
        "learning_rate": 1e-4,
        "warmup_steps": 1_000,
        "grad_accum": 1,
        "train_params": "dreamlayer",
        "compute_dtype": "bfloat16",
        "min_snr_gamma": 5.0,
        "ema_decay": 0.9999,
        "checkpoint_every": 1_000,
        "keep_checkpoints": 3,
        "log_every": 50,
        "sample_every": 2_000,
        "sample_steps": 25,
        "mesh": (-1, 1, 1),
    }
