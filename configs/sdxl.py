"""Fine-tune SDXL into DreamLayer at 1024 px: full weights, fsdp-sharded, bf16 compute.

`model` is a diffusers SDXL folder (or a DreamLayer folder made from one): both text
encoders run frozen inside the step, and every layer gets its own prompt's pooled
embedding and the canvas's size `time_ids`, as SDXL was trained. Dropped prompts
encode to zeros (SDXL's `force_zeros_for_empty_prompt`), as in sampling. A plain folder
starts from DreamLayer's defaults at SDXL's native 1024 px; `dreamlayer` sets the layer
count. Train the transparency decoder first (`mode="transparency"`) for RGBA layers.

    python train.py --config configs/sdxl.py --workdir runs/sdxl \
        --set model=/path/to/sdxl data_dir=/path/to/tfds
"""


def get_config() -> dict:
    return {
        "model": "",  # the SDXL folder (set with --set model=...)
        "data_dir": "",  # a TFDS dataset built by dreamlayer_jax.data.tfds_builder
        "dreamlayer": {"max_layers": 6},
        "batch_size": 64,
        "num_steps": 100_000,
        "learning_rate": 5e-5,
        "warmup_steps": 2_000,
        "grad_accum": 2,
        "train_params": "all",
        "compute_dtype": "bfloat16",
        "min_snr_gamma": 5.0,
        "ema_decay": 0.9999,
        "checkpoint_every": 2_000,
        "log_every": 50,
        "sample_every": 5_000,
        "sample_steps": 25,
        "mesh": (-1, 4, 1),
    }
