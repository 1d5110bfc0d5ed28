"""CLIP tokenization: transformers' `CLIPTokenizer`, loaded from a diffusers-style folder."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from dreamlayer_jax.errors import InputError, WeightsError
from dreamlayer_jax.io import resolve_model_folder


def load_tokenizer(path: str | os.PathLike, subfolder: str | None = "tokenizer") -> Any:
    """transformers' `CLIPTokenizer` from `path/subfolder` (vocab.json + merges.txt, or
    tokenizer.json), a local folder or a hub id. Any failure is a `WeightsError`."""
    from transformers import CLIPTokenizer

    folder = resolve_model_folder(path, subfolder)
    has_bpe_files = (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    if not (folder / "tokenizer.json").is_file() and not has_bpe_files:
        # transformers would silently build a 3-token tokenizer from an empty folder
        raise WeightsError(f"no CLIP tokenizer in {str(folder)!r} (expected tokenizer.json, "
                           f"or vocab.json and merges.txt)")
    try:
        return CLIPTokenizer.from_pretrained(str(folder))
    except Exception as exc:  # noqa: BLE001 - any reader failure becomes one clear message
        raise WeightsError(
            f"cannot load a CLIP tokenizer from {str(folder)!r}: {type(exc).__name__}: {exc}"
        ) from exc


def tokenize(tokenizer: Any, prompts: list[str], max_length: int | None = None) -> np.ndarray:
    """Token ids `int32 [N, max_length]` of `prompts`, truncated and padded to `max_length`.

    `max_length` defaults to `tokenizer.model_max_length` (77 for Stable Diffusion); each
    row starts with the begin-of-text token and ends with end-of-text, then padding.
    """
    if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
        raise InputError("tokenize expects a list of prompt strings")
    length = max_length if max_length is not None else tokenizer.model_max_length
    if not isinstance(length, int) or not 2 <= length <= 1_000_000:
        raise InputError(f"max_length must be an integer >= 2, got {length!r}; set it or the "
                         f"tokenizer's model_max_length")
    encoded = tokenizer(list(prompts), padding="max_length", max_length=length,
                        truncation=True, return_tensors="np")
    return np.asarray(encoded["input_ids"], dtype=np.int32)
