"""Lengthening a model folder's text: more position embeddings for its CLIP text encoder.

A model trained with 32 text positions cannot read a longer prompt; retraining from
scratch for 64 throws its training away. CLIP's text attention is causal, so appending
position rows leaves every hidden state at positions below the old length exactly as it
was: the model computes the same function on prompts that fit the old length, and the
new rows (drawn like the old ones: normal with their standard deviation) only see
tokens that were cut before. Training then adapts the UNet to the longer context.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dreamlayer_jax.errors import ConfigError
from dreamlayer_jax.io.safetensors_io import load_config, load_state_dict, save_state_dict

POSITION_KEY = "text_model.embeddings.position_embedding.weight"
_POSITION_IDS = "text_model.embeddings.position_ids"


def text_length(folder: Path, part: str = "text_encoder") -> int:
    """`max_position_embeddings` of `folder/part`."""
    return int(load_config(folder / part)["max_position_embeddings"])


def extend_text_positions(folder: Path, length: int, seed: int = 0,
                          part: str = "text_encoder", tokenizer: str = "tokenizer") -> None:
    """Rewrite `folder/part` (and `folder/tokenizer`'s `model_max_length`) for `length`
    text positions. The position table `[old, D]` becomes `[length, D]`: rows `[:old]`
    kept, the rest drawn from `N(0, std(old rows))` with `seed`. Shorter is refused."""
    enc = folder / part
    config = load_config(enc)
    old = int(config["max_position_embeddings"])
    if length < old:
        raise ConfigError(f"{enc} has {old} text positions; cutting it to {length} would "
                          "change what the model computes")
    if length == old:
        return
    state = load_state_dict(enc)
    if POSITION_KEY not in state:
        raise ConfigError(f"{enc} has no {POSITION_KEY}: not a CLIP text encoder")
    table = np.asarray(state[POSITION_KEY])
    rng = np.random.default_rng(seed)
    extra = rng.normal(0.0, float(table.std()), (length - old, table.shape[1]))
    state[POSITION_KEY] = np.concatenate([table, extra.astype(table.dtype)], axis=0)
    if _POSITION_IDS in state:
        state[_POSITION_IDS] = np.arange(length, dtype=state[_POSITION_IDS].dtype)[None]
    weights = [p.name for p in enc.glob("*.safetensors")]
    if weights != ["model.safetensors"]:
        raise ConfigError(f"{enc}: expected one model.safetensors, found {weights}")
    save_state_dict(state, enc, "model.safetensors")
    config["max_position_embeddings"] = length
    (enc / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    tok = folder / tokenizer / "tokenizer_config.json"
    if tok.is_file():
        tok_config = json.loads(tok.read_text())
        tok_config["model_max_length"] = length
        tok.write_text(json.dumps(tok_config) + "\n")
