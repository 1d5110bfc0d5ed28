"""Prompt encoding for Stable Diffusion: SD 1.x / 2.x (one CLIP) and SDXL (two CLIPs).

- SD 1.x / 2.x: the UNet's context is the text encoder's `last_hidden_state [N, T, D]`.
- SDXL: the context is both encoders' penultimate hidden states concatenated along
  features (`[N, T, D1 + D2]`), and the UNet also gets `added_cond_kwargs`:
  `text_embeds [N, P]` (encoder 2's projected pooled output) and `time_ids [N, 6]` =
  `(orig_h, orig_w, crop_top, crop_left, target_h, target_w)`.

The encoders run as small jitted pure functions of `(graphdef, params, ids)`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from functools import partial
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


@partial(jax.jit, static_argnames=("graphdef",))
def encode_last_hidden(graphdef: nnx.GraphDef, params: nnx.State, ids: jax.Array) -> jax.Array:
    """SD 1.x / 2.x: token ids `int32[N, T]` -> `last_hidden_state [N, T, D]`."""
    return nnx.merge(graphdef, params)(ids).last_hidden_state


@partial(jax.jit, static_argnames=("graphdef_1", "graphdef_2"))
def encode_sdxl(graphdef_1: nnx.GraphDef, params_1: nnx.State, ids_1: jax.Array,
                graphdef_2: nnx.GraphDef, params_2: nnx.State, ids_2: jax.Array
                ) -> tuple[jax.Array, jax.Array]:
    """SDXL: ids of both tokenizers `int32[N, T]` -> (`[N, T, D1 + D2]` penultimate hidden
    states concatenated, `[N, P]` encoder 2's pooled projection `text_embeds`)."""
    out_1 = nnx.merge(graphdef_1, params_1)(ids_1, output_hidden_states=True)
    out_2 = nnx.merge(graphdef_2, params_2)(ids_2, output_hidden_states=True)
    hidden = jnp.concatenate([out_1.hidden_states[-2], out_2.hidden_states[-2]], axis=-1)
    return hidden, out_2.text_embeds


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

    def encode(self, prompts: Sequence[str]) -> tuple[jax.Array, jax.Array | None]:
        """`(hidden [N, T, D], pooled [N, P] or None)` for a list of prompts."""
        if isinstance(prompts, str) or not prompts:
            raise InputError("encode expects a non-empty list of prompt strings")
        ids = [jnp.asarray(tokenize(tok, list(prompts))) for tok in self.tokenizers]
        if not self.is_sdxl:
            graphdef, params = self._split[0]
            return encode_last_hidden(graphdef, params, ids[0]), None
        (g1, p1), (g2, p2) = self._split
        return encode_sdxl(g1, p1, ids[0], g2, p2, ids[1])

    def __call__(self, prompts: Sequence[str], size: tuple[int, int], *,
                 original_size: tuple[int, int] | None = None,
                 crop_top_left: tuple[int, int] = (0, 0), zero_empty: bool = False
                 ) -> tuple[jax.Array, AddedCond | None]:
        """Encode `prompts` for images of `size = (height, width)` pixels."""
        hidden, pooled = self.encode(prompts)
        if zero_empty and self.force_zeros_for_empty_prompt:
            keep = jnp.asarray([bool(p) for p in prompts])
            hidden = jnp.where(keep[:, None, None], hidden, 0)
            pooled = None if pooled is None else jnp.where(keep[:, None], pooled, 0)
        if pooled is None:
            return hidden, None
        time_ids = sdxl_time_ids(len(prompts), size, original_size, crop_top_left)
        return hidden, {"text_embeds": pooled, "time_ids": time_ids}
