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


def write_word_tokenizer(folder: str | os.PathLike, words: list[str], max_length: int) -> None:
    """Write a CLIP BPE tokenizer (vocab.json, merges.txt) in which every word of `words`
    is one token; other text falls back to single characters. Used by small models
    trained on a closed vocabulary (the built-in model)."""
    import json
    import string
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab: dict[str, int] = {}

    def add(token: str) -> None:
        vocab.setdefault(token, len(vocab))

    for token in ("<|startoftext|>", "<|endoftext|>"):
        add(token)
    for ch in string.ascii_lowercase + string.digits + ".,'-!?":
        add(ch)
        add(ch + "</w>")
    merges: list[str] = []
    for word in sorted({w.lower() for w in words if w.isalnum()}):
        pieces = [*word[:-1], word[-1] + "</w>"]
        merged = pieces[0]
        for piece in pieces[1:]:
            rule = f"{merged} {piece}"
            merged += piece
            if rule not in merges:
                merges.append(rule)
            add(merged)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    config = {"model_max_length": max_length, "tokenizer_class": "CLIPTokenizer",
              "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
              "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


CLOSED_VOCABULARY_SIZE = 10_000  # fewer entries: a word tokenizer over a closed vocabulary


def unknown_words(tokenizer: Any, prompts: list[str]) -> list[str]:
    """The words of `prompts` a closed-vocabulary tokenizer (`write_word_tokenizer`'s,
    e.g. the built-in model's) has no token for, in order of appearance; [] for an open
    vocabulary (CLIP's 49408 BPE tokens read any text)."""
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    if not vocab or len(vocab) >= CLOSED_VOCABULARY_SIZE:
        return []
    out: list[str] = []
    for prompt in prompts:
        for raw in prompt.lower().split():
            word = raw.strip(".,;:!?'\"()[]")
            if (word and word.isalpha() and f"{word}</w>" not in vocab
                    and word not in out):
                out.append(word)
    return out


def warn_unknown_words(tokenizer: Any, prompts: list[str]) -> list[str]:
    """One warning line naming the words `unknown_words` finds (returns them)."""
    words = unknown_words(tokenizer, prompts)
    if words:
        import warnings

        shown = ", ".join(repr(w) for w in words[:12]) + (" ..." if len(words) > 12 else "")
        them = "them" if len(words) > 1 else "it"
        warnings.warn(f"the model has never seen {shown}: its closed vocabulary reads "
                      f"{them} letter by letter, so expect {them} to be ignored", stacklevel=2)
    return words
