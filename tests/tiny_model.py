"""A tiny random DreamLayer model folder for tests (written by the tests themselves)."""

from pathlib import Path

from dreamlayer_jax.data.synthetic_vocab import VOCABULARY
from dreamlayer_jax.pipeline.create import create_model_folder

TINY_UNET = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [16, 32],
    "layers_per_block": 1,
    "attention_head_dim": 8,
    "norm_num_groups": 8,
    "cross_attention_dim": 16,
}
TINY_TEXT = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
             "num_attention_heads": 2, "max_position_embeddings": 32, "hidden_act": "quick_gelu"}
TINY_SCHEDULER = {"_class_name": "DDIMScheduler", "num_train_timesteps": 1000,
                  "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
                  "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}
WORDS = [*VOCABULARY, "in", "front", "of", "on", "with"]


def write_tiny_model(folder: Path, max_layers: int = 5, seed: int = 0) -> Path:
    """8x8 pixels (pixel codec, no unshuffle), up to `max_layers - 2` foregrounds."""
    return create_model_folder(
        folder, unet=TINY_UNET, text_encoder=TINY_TEXT, words=WORDS,
        dreamlayer={"max_layers": max_layers, "codec": "pixel", "resolution": 8,
                    "box_margin": 0.0},
        scheduler=TINY_SCHEDULER, seed=seed)


PAPER_FIELDS = {"variant": "paper", "context_width": 16, "context_heads": 2,
                "context_layers": 1}


def write_tiny_paper_model(folder: Path, max_layers: int = 5, seed: int = 0) -> Path:
    """`write_tiny_model`'s model in the paper variant (docs/DESIGN.md): context maps
    from its one cross-attention down block, one small context-aware layer; no box needed."""
    return create_model_folder(
        folder, unet=TINY_UNET, text_encoder=TINY_TEXT, words=WORDS,
        dreamlayer={"max_layers": max_layers, "codec": "pixel", "resolution": 8,
                    "box_margin": 0.0, **PAPER_FIELDS},
        scheduler=TINY_SCHEDULER, seed=seed)


# The training tests' model: one resolution level; 16x16 RGBA scenes pixel-unshuffled by
# 2 into 8x8x16 latents, up to 2 foregrounds.
SMALL_UNET = {**TINY_UNET, "in_channels": 16, "out_channels": 16,
              "down_block_types": ["CrossAttnDownBlock2D"],
              "up_block_types": ["CrossAttnUpBlock2D"], "block_out_channels": [16]}


def write_small_train_model(folder: Path) -> Path:
    return create_model_folder(
        folder, unet=SMALL_UNET, text_encoder=TINY_TEXT, words=WORDS,
        dreamlayer={"max_layers": 4, "codec": "pixel", "pixel_unshuffle": 2,
                    "resolution": 16, "box_margin": 0.0},
        scheduler=TINY_SCHEDULER)


def small_train_fields(model: Path, **overrides) -> dict:
    """`TrainConfig` fields of the small training runs (a JSON-able dict)."""
    return {"model": str(model), "batch_size": 4, "max_layers": 4, "synthetic_scenes": 8,
            "synthetic_resolution": 16, "num_steps": 6, "checkpoint_every": 3,
            "warmup_steps": 2, "learning_rate": 3e-3, "ema_decay": 0.9, "log_every": 2,
            "async_checkpoints": True, "progress": False, "export": True, **overrides}
