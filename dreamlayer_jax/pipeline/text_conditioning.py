"""Prompt encoding for Stable Diffusion: SD 1.x / 2.x (one CLIP) and SDXL (two CLIPs).

- SD 1.x / 2.x: the UNet's context is the text encoder's `last_hidden_state [N, T, D]`.
- SDXL: the context is both encoders' penultimate hidden states concatenated along
  features (`[N, T, D1 + D2]`), and the UNet also gets `added_cond_kwargs`:
  `text_embeds [N, P]` (encoder 2's projected pooled output) and `time_ids [N, 6]` =
  `(orig_h, orig_w, crop_top, crop_left, target_h, target_w)`.

The encoders run as one pure function of `(graphdefs, params, ids)` (`encode_tokens`),
jitted here for sampling and traced into the train step (`training/step.py`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dreamlayer_jax.errors import ConfigError, InputError
from dreamlayer_jax.io import resolve_model_folder
from dreamlayer_jax.models.clip import CLIPTextModel, CLIPTextModelWithProjection
from dreamlayer_jax.models.tokenizer import load_tokenizer, tokenize

AddedCond = dict[str, jax.Array]


def encode_tokens(graphdefs: Sequence[nnx.GraphDef], params: Sequence[Any],
                  ids: Sequence[jax.Array]) -> tuple[jax.Array, jax.Array | None]:
    """Token ids of each tokenizer `int32[N, T]` -> `(hidden [N, T, D], pooled [N, P] | None)`.

    A pure function of the encoders' parameters (`nnx.split` states or pure dicts), so
    the train step can run it inside its own jit. One encoder (SD 1.x / 2.x): its
    `last_hidden_state` and no pooled output. Two (SDXL): both penultimate hidden states
    concatenated along features, and encoder 2's projected pooled output `text_embeds`.
    """
    models = [nnx.merge(g, p) for g, p in zip(graphdefs, params, strict=True)]
    if len(models) == 1:
        return models[0](ids[0]).last_hidden_state, None
    out_1 = models[0](ids[0], output_hidden_states=True)
    out_2 = models[1](ids[1], output_hidden_states=True)
    hidden = jnp.concatenate([out_1.hidden_states[-2], out_2.hidden_states[-2]], axis=-1)
    return hidden, out_2.text_embeds


_encode_jit = jax.jit(encode_tokens, static_argnums=0)


def sdxl_time_ids(n: int, target_size: tuple[int, int],
                  original_size: tuple[int, int] | None = None,
                  crop_top_left: tuple[int, int] = (0, 0)) -> jax.Array:
    """SDXL's micro-conditioning `float32[N, 6]`: original size, crop corner, target size
    (each `(h, w)`; the original size defaults to the target size)."""
    original = target_size if original_size is None else original_size
    row = np.array([*original, *crop_top_left, *target_size], np.float32)
    return jnp.asarray(np.tile(row, (n, 1)))


class TextConditioner:
    """Prompts -> the UNet's `(encoder_hidden_states [N, T, D], added_cond_kwargs | None)`.

    With one encoder (SD 1.x / 2.x) `added_cond_kwargs` is None; with two (SDXL) it holds
    `text_embeds [N, P]` and `time_ids [N, 6]`. `force_zeros_for_empty_prompt` (SDXL's
    `model_index.json` flag) makes empty prompts encode to zeros when `zero_empty=True`
    (what SDXL pipelines do for an unset negative prompt).
    """

    def __init__(self, encoders: Sequence[nnx.Module], tokenizers: Sequence[Any], *,
                 force_zeros_for_empty_prompt: bool = False):
        if len(encoders) not in (1, 2) or len(encoders) != len(tokenizers):
            raise ConfigError(f"expected 1 or 2 text encoders with as many tokenizers, got "
                              f"{len(encoders)} encoders and {len(tokenizers)} tokenizers")
        if len(encoders) == 2 and not isinstance(encoders[1], CLIPTextModelWithProjection):
            raise ConfigError("SDXL's second text encoder must be a CLIPTextModelWithProjection")
        self.tokenizers = list(tokenizers)
        self._split = [nnx.split(e) for e in encoders]
        self.force_zeros_for_empty_prompt = force_zeros_for_empty_prompt

    @property
    def is_sdxl(self) -> bool:
        return len(self._split) == 2

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, dtype: jnp.dtype = jnp.float32
                        ) -> TextConditioner:
        """Read `text_encoder/`, `tokenizer/` and, when present, `text_encoder_2/`,
        `tokenizer_2/` (SDXL) from a Stable Diffusion folder."""
        folder = resolve_model_folder(path)
        encoders: list[nnx.Module] = [
            CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", dtype=dtype)]
        tokenizers = [load_tokenizer(folder, "tokenizer")]
        if (folder / "text_encoder_2").is_dir():
            encoders.append(CLIPTextModelWithProjection.from_pretrained(
                folder, subfolder="text_encoder_2", dtype=dtype))
            tokenizers.append(load_tokenizer(folder, "tokenizer_2"))
        index = folder / "model_index.json"
        force_zeros = False
        if index.is_file():
            force_zeros = bool(json.loads(index.read_text()).get(
                "force_zeros_for_empty_prompt", False))
        return cls(encoders, tokenizers, force_zeros_for_empty_prompt=force_zeros)

    @property
    def graphdefs(self) -> tuple[nnx.GraphDef, ...]:
        return tuple(g for g, _ in self._split)

    @property
    def params(self) -> list[nnx.State]:
        """The encoders' parameters, in `encode_tokens` order (frozen, unless a run trains
        them: `TrainConfig.train_text_encoder`)."""
        return [p for _, p in self._split]

    def encoders(self) -> list[nnx.Module]:
        """The encoders as modules (SD: one; SDXL: two), built from `graphdefs`/`params`."""
        return [nnx.merge(g, p) for g, p in self._split]

    @property
    def max_length(self) -> int:
        """Tokens per prompt (the shortest tokenizer's limit; SDXL's two agree)."""
        return min(tok.model_max_length for tok in self.tokenizers)

    def tokenize(self, prompts: Sequence[str]) -> list[np.ndarray]:
        """`int32[N, T]` token ids of `prompts` for each tokenizer."""
        return [tokenize(tok, list(prompts)) for tok in self.tokenizers]

    def truncated(self, prompts: Sequence[str]) -> list[str]:
        """The prompts longer than a tokenizer's limit (they are cut to it)."""
        return [p for p in prompts if p and any(
            len(tok(p)["input_ids"]) > tok.model_max_length for tok in self.tokenizers)]

    def special_ids(self) -> list[tuple[int, int]]:
        """`(eos_id, pad_id)` of each tokenizer."""
        return [(int(tok.eos_token_id), int(tok.pad_token_id)) for tok in self.tokenizers]

    def encode(self, prompts: Sequence[str]) -> tuple[jax.Array, jax.Array | None]:
        """`(hidden [N, T, D], pooled [N, P] or None)` for a list of prompts."""
        if isinstance(prompts, str) or not prompts:
            raise InputError("encode expects a non-empty list of prompt strings")
        return self.encode_ids([jnp.asarray(i) for i in self.tokenize(prompts)])

    def encode_ids(self, ids: Sequence[jax.Array]) -> tuple[jax.Array, jax.Array | None]:
        """`encode` from token ids, `int32[N, T]` for each tokenizer."""
        return _encode_jit(self.graphdefs, self.params, [jnp.asarray(i) for i in ids])

    def __call__(self, prompts: Sequence[str], size: tuple[int, int], *,
                 original_size: tuple[int, int] | None = None,
                 crop_top_left: tuple[int, int] = (0, 0), zero_empty: bool = False,
                 ids: Sequence[jax.Array] | None = None
                 ) -> tuple[jax.Array, AddedCond | None]:
        """Encode `prompts` for images of `size = (height, width)` pixels; `ids`, when
        given, are their token ids (e.g. with a rebuilt global prompt) and are encoded
        instead."""
        hidden, pooled = self.encode(prompts) if ids is None else self.encode_ids(ids)
        if zero_empty and self.force_zeros_for_empty_prompt:
            keep = jnp.asarray([bool(p) for p in prompts])
            hidden, pooled = zero_where_empty(keep, hidden, pooled)
        if pooled is None:
            return hidden, None
        time_ids = sdxl_time_ids(len(prompts), size, original_size, crop_top_left)
        return hidden, {"text_embeds": pooled, "time_ids": time_ids}


def zero_where_empty(keep: jax.Array, hidden: jax.Array, pooled: jax.Array | None
                     ) -> tuple[jax.Array, jax.Array | None]:
    """SDXL's `force_zeros_for_empty_prompt`: zero `hidden [N, T, D]` and `pooled [N, P]`
    where `keep [N]` is False (an empty prompt)."""
    hidden = jnp.where(keep[:, None, None], hidden, 0)
    return hidden, None if pooled is None else jnp.where(keep[:, None], pooled, 0)
