"""DreamLayer as the paper trains it (DESIGN.md section 8): SD 1.5 at 512 px, paper variant.

    python train.py --config configs/paper_sd15.py --workdir runs/paper_sd15 \
        --set model=/path/to/stable-diffusion-v1-5 data_dir=/path/to/tfds

`model` is a plain diffusers SD 1.5 folder (no `dreamlayer/`): `dreamlayer` builds the
paper's parts fresh on it (zero layer assign embedding, context-aware layers, foreground
K/V pairs copied from the base), so the model starts as SD 1.5 unchanged. At most 4
layers + the global one (`max_layers` 5: background + 3 foregrounds + global).

Custom-Diffusion style: only the attentions' K/V projections, the foreground K/V pairs,
the layer assign embedding and the context-aware layers train (`train_params="kv"`),
at a constant lr 2e-6, batch 4, epsilon loss plus the context-map losses (weights 1, 1).
Curriculum: 2-layer scenes (background + 1 foreground) for the first 60k steps, then
scenes of up to 4 layers. The paper gives no total step count (4 days on 2 A100s):
120k here. Eval samples: 50 DDIM steps.
"""


def get_config() -> dict:
    return {
        "model": "",  # the SD 1.5 folder (set with --set model=...)
        "data_dir": "",  # a TFDS dataset built by dreamlayer_jax.data.tfds_builder
        "dreamlayer": {"variant": "paper", "max_layers": 5},
        "curriculum": ((0, 1), (60_000, 3)),
        "batch_size": 4,
        "num_steps": 120_000,
        "learning_rate": 2e-6,
        "warmup_steps": 0,
        "end_lr_ratio": 1.0,  # constant
        "train_params": "kv",
        "compute_dtype": "bfloat16",
        "prediction_type": "epsilon",
        "min_snr_gamma": 0.0,
        "role_loss_weights": (1.0, 1.0, 1.0),
        "context_loss_weight": 1.0,
        "layout_loss_weight": 1.0,
        "ema_decay": 0.9999,
        "checkpoint_every": 2_000,
        "keep_checkpoints": 3,
        "log_every": 50,
        "sample_every": 5_000,
        "sample_steps": 50,
        "sample_scheduler": "ddim",
        "mesh": (-1, 1, 1),
    }
