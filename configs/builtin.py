"""The built-in model: a small DreamLayer trained from scratch on synthetic scenes.

Reproduce the weights shipped in `dreamlayer_jax/builtin/box/` with `make builtin`, i.e.

    python -m dreamlayer_jax.cli.init_model configs/builtin.py runs/builtin/init
    python train.py --config configs/builtin.py --workdir runs/builtin \
        --set model=runs/builtin/init
    # then `make install-builtin` copies runs/builtin/export to dreamlayer_jax/builtin/box/

32x32 RGBA pixels (PixelCodec, pixel-unshuffled to 16x16x16 latents), up to 3
foregrounds, its own word tokenizer and a 2-layer text encoder over the synthetic
vocabulary (random and frozen: training fits the UNet to its features).

Objective: v-prediction with a uniform weight over timesteps. The first preview used
epsilon-prediction with min-SNR-5 weighting; short of training, its x0 estimates at high
noise (epsilon errors amplified by sqrt((1 - a) / a), 14x at t = 999) sampled to pure
noise, while v-prediction's stay bounded. Sampling: Euler ancestral (trailing spacing),
whose injected noise corrects part of the small model's errors (DDIM, deterministic,
keeps more high-frequency residue; `--scheduler ddim` still works, and decomposition
always inverts with DDIM).

Paths in the config name places in this repository (`repo_path`), whatever the working
directory: `train.py --config /abs/path/configs/builtin.py` works from anywhere.
"""

from pathlib import Path

RESOLUTION = 32
REPO = Path(__file__).resolve().parent.parent  # configs/ sits in the repository's root


def repo_path(relative: str) -> str:
    """`relative` (e.g. "runs/builtin/init") as an absolute path inside this repository."""
    return str(REPO / relative)


ARCHITECTURE = {
    "unet": {
        "sample_size": RESOLUTION // 2,
        "in_channels": 16,
        "out_channels": 16,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "block_out_channels": [48, 96],
        "layers_per_block": 1,
        "attention_head_dim": 4,
        "norm_num_groups": 16,
        "cross_attention_dim": 64,
    },
    "text_encoder": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "max_position_embeddings": 32,
                     "hidden_act": "quick_gelu"},
    "dreamlayer": {"max_layers": 5, "codec": "pixel", "pixel_unshuffle": 2,
                   "resolution": RESOLUTION,
                   "box_margin": 0.05, "irh_start": 0.3, "irh_retain": 0.5},
    "scheduler": {"_class_name": "EulerAncestralDiscreteScheduler", "num_train_timesteps": 1000,
                  "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
                  "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1,
                  "prediction_type": "v_prediction", "timestep_spacing": "trailing"},
}


def get_config() -> dict:
    return {
        "model": repo_path("runs/builtin/init"),
        "synthetic_scenes": 4096,
        "synthetic_resolution": RESOLUTION,
        "batch_size": 8,
        "num_steps": 1500,
        "learning_rate": 1e-3,
        "warmup_steps": 100,
        "end_lr_ratio": 0.05,
        "ema_decay": 0.995,
        "min_snr_gamma": 0.0,
        "prompt_dropout": 0.1,
        "checkpoint_every": 250,
        "keep_checkpoints": 2,
        "log_every": 25,
        "sample_every": 0,
        "sample_steps": 20,
        "mesh": (-1, 1, 1),
    }
