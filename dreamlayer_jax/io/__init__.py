"""Reading and writing checkpoints: diffusers-format folders and safetensors."""

from dreamlayer_jax.io.hub import resolve_model_folder
from dreamlayer_jax.io.safetensors_io import load_config, load_state_dict, save_state_dict
from dreamlayer_jax.io.torch_to_nnx import (
    load_torch_state_into,
    nnx_state_to_torch,
    update_from_torch,
)

__all__ = [
    "load_config",
    "load_state_dict",
    "load_torch_state_into",
    "nnx_state_to_torch",
    "resolve_model_folder",
    "save_state_dict",
    "update_from_torch",
]
