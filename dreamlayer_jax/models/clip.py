"""CLIP's text encoder (`CLIPTextModel`, `CLIPTextModelWithProjection`) in flax.nnx.

Numerically the same as transformers' models (pre-norm causal transformer, pooled output
at the end-of-text token), with the same parameter names (`text_model.encoder.layers.0.
self_attn.q_proj`, ..., `text_projection`). Checkpoints are read in both layouts found in
the wild: the hub's (keys prefixed `text_model.`, as Stable Diffusion's `text_encoder/`
folders and transformers' `CLIPTextModelWithProjection` store them) and transformers 5's
`CLIPTextModel.save_pretrained` (no prefix). They are written in the hub's layout, which
transformers reads back.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, Self

import jax
import jax.numpy as jnp
from flax import nnx

from dreamlayer_jax.errors import ConfigError, InputError
from dreamlayer_jax.io import (
    load_config,
    load_state_dict,
    load_torch_state_into,
    resolve_model_folder,
)
from dreamlayer_jax.models.config_base import ModelConfig
from dreamlayer_jax.models.pretrained import PretrainedMixin

_PREFIX = "text_model."
_LEGACY_EOS_TOKEN_ID = 2  # configs written before transformers#24773 pool at argmax(input_ids)

_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}


@dataclass(frozen=True)
class CLIPTextConfig(ModelConfig):
    """transformers' `CLIPTextConfig` (same keys as its config.json)."""

    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    projection_dim: int = 512
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    pad_token_id: int | None = 1
    bos_token_id: int | None = 49406
    eos_token_id: int | None = 49407

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Self:
        """Read a flat text config, or the `text_config` of a full `CLIPConfig`."""
        nested = raw.get("text_config")
        if isinstance(nested, dict):
            raw = nested
        return super().from_dict(raw)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def validate(self, raw: dict[str, Any]) -> None:
        owner = "CLIPTextConfig"
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(f"{owner}: hidden_size={self.hidden_size} is not divisible by "
                              f"num_attention_heads={self.num_attention_heads}")
        self.require(raw, "hidden_act", tuple(_ACTIVATIONS), owner)
        if self.eos_token_id is None:
            raise ConfigError(f"{owner}: eos_token_id is required to pool the text features")


class CLIPTextOutput(NamedTuple):
    """What the text encoders return.

    `last_hidden_state [N, T, D]` (after the final layer norm), `pooler_output [N, D]`
    (its end-of-text position), `hidden_states` (the embeddings, then each layer's output:
    `num_hidden_layers + 1` arrays `[N, T, D]`, or None) and `text_embeds [N, P]` (the
    projected pooled output, `CLIPTextModelWithProjection` only).
    """

    last_hidden_state: jax.Array
    pooler_output: jax.Array
    hidden_states: tuple[jax.Array, ...] | None = None
    text_embeds: jax.Array | None = None


class CLIPTextEmbeddings(nnx.Module):
    """Token embedding plus learned absolute position embedding."""

    def __init__(self, config: CLIPTextConfig, *, rngs: nnx.Rngs, dtype: jnp.dtype):
        d = config.hidden_size
        self.token_embedding = nnx.Embed(config.vocab_size, d, dtype=dtype, rngs=rngs)
        self.position_embedding = nnx.Embed(config.max_position_embeddings, d, dtype=dtype,
                                            rngs=rngs)

    def __call__(self, input_ids: jax.Array) -> jax.Array:
        """`input_ids [N, T] -> [N, T, D]`."""
        positions = jnp.arange(input_ids.shape[-1])
        return self.token_embedding(input_ids) + self.position_embedding(positions)[None]


class CLIPAttention(nnx.Module):
    """Multi-head causal self-attention with q/k/v/out projections."""

    def __init__(self, config: CLIPTextConfig, *, rngs: nnx.Rngs, dtype: jnp.dtype):
        d = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.q_proj = nnx.Linear(d, d, dtype=dtype, rngs=rngs)
        self.k_proj = nnx.Linear(d, d, dtype=dtype, rngs=rngs)
        self.v_proj = nnx.Linear(d, d, dtype=dtype, rngs=rngs)
        self.out_proj = nnx.Linear(d, d, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """`x [N, T, D] -> [N, T, D]`; position `t` sees positions `<= t` only."""
        n, t, d = x.shape
        heads = (n, t, self.num_heads, d // self.num_heads)
        q, k, v = (proj(x).reshape(heads) for proj in (self.q_proj, self.k_proj, self.v_proj))
        attended = jax.nn.dot_product_attention(q, k, v, is_causal=True)
        return self.out_proj(attended.reshape(n, t, d))


class CLIPMLP(nnx.Module):
    """`fc2(act(fc1(x)))`."""

    def __init__(self, config: CLIPTextConfig, *, rngs: nnx.Rngs, dtype: jnp.dtype):
        self.act = _ACTIVATIONS[config.hidden_act]
        self.fc1 = nnx.Linear(config.hidden_size, config.intermediate_size, dtype=dtype,
                              rngs=rngs)
        self.fc2 = nnx.Linear(config.intermediate_size, config.hidden_size, dtype=dtype,
                              rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(self.act(self.fc1(x)))


def _layer_norm(config: CLIPTextConfig, *, rngs: nnx.Rngs, dtype: jnp.dtype) -> nnx.LayerNorm:
    return nnx.LayerNorm(config.hidden_size, epsilon=config.layer_norm_eps,
                         use_fast_variance=False, dtype=dtype, rngs=rngs)


class CLIPEncoderLayer(nnx.Module):
    """Pre-norm transformer layer: `x + attn(ln1(x))`, then `x + mlp(ln2(x))`."""

    def __init__(self, config: CLIPTextConfig, *, rngs: nnx.Rngs, dtype: jnp.dtype):
        self.self_attn = CLIPAttention(config, rngs=rngs, dtype=dtype)
        self.layer_norm1 = _layer_norm(config, rngs=rngs, dtype=dtype)
        self.mlp = CLIPMLP(config, rngs=rngs, dtype=dtype)
        self.layer_norm2 = _layer_norm(config, rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nnx.Module):
    """The stack of `num_hidden_layers` encoder layers."""

    def __init__(self, config: CLIPTextConfig, *, rngs: nnx.Rngs, dtype: jnp.dtype):
        self.layers = nnx.List([CLIPEncoderLayer(config, rngs=rngs, dtype=dtype)
                                for _ in range(config.num_hidden_layers)])

    def __call__(self, x: jax.Array) -> tuple[jax.Array, ...]:
        """`x [N, T, D]` -> the input and every layer's output (`num_hidden_layers + 1`)."""
        states = [x]
        for layer in self.layers:
            states.append(layer(states[-1]))
        return tuple(states)


class CLIPTextTransformer(nnx.Module):
    """Embeddings, encoder, final layer norm and end-of-text pooling."""

    def __init__(self, config: CLIPTextConfig, *, rngs: nnx.Rngs, dtype: jnp.dtype):
        self.config = config
        self.embeddings = CLIPTextEmbeddings(config, rngs=rngs, dtype=dtype)
        self.encoder = CLIPEncoder(config, rngs=rngs, dtype=dtype)
        self.final_layer_norm = _layer_norm(config, rngs=rngs, dtype=dtype)

    def __call__(self, input_ids: jax.Array, output_hidden_states: bool = False) -> CLIPTextOutput:
        """`input_ids [N, T]` (integers, `T <= max_position_embeddings`) -> `CLIPTextOutput`."""
        if input_ids.ndim != 2:
            raise InputError(f"CLIP expects input_ids [N, T], got shape {tuple(input_ids.shape)}")
        if input_ids.shape[1] > self.config.max_position_embeddings:
            raise InputError(f"CLIP takes at most {self.config.max_position_embeddings} tokens, "
                             f"got {input_ids.shape[1]}")
        states = self.encoder(self.embeddings(input_ids))
        last = self.final_layer_norm(states[-1])
        pooled = jnp.take_along_axis(last, self.eos_position(input_ids)[:, None, None], axis=1)
        return CLIPTextOutput(last_hidden_state=last, pooler_output=pooled[:, 0],
                              hidden_states=states if output_hidden_states else None)

    def eos_position(self, input_ids: jax.Array) -> jax.Array:
        """`[N]` index of the pooled token, exactly as transformers picks it.

        Legacy configs (`eos_token_id == 2`) take the largest token id (the end-of-text
        token of the original vocabulary); others take the first `eos_token_id`.
        """
        if self.config.eos_token_id == _LEGACY_EOS_TOKEN_ID:
            return jnp.argmax(input_ids, axis=-1)
        return jnp.argmax(input_ids == self.config.eos_token_id, axis=-1)


class _CLIPPretrained(PretrainedMixin):
    """Loading and saving in transformers' layouts, shared by both text encoders."""

    config_class: ClassVar[type[CLIPTextConfig]] = CLIPTextConfig
    weights_name: ClassVar[str] = "model.safetensors"
    ignore_keys: ClassVar[tuple[str, ...]] = ("position_ids",)

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        subfolder: str | None = None,
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
    ) -> Self:
        """Load config.json and model.safetensors, with or without the `text_model.` prefix."""
        folder = resolve_model_folder(path, subfolder)
        config = cls.config_class.from_dict(load_config(folder))
        state = load_state_dict(folder)
        prefixed = any(key.startswith(_PREFIX) for key in state)
        return load_torch_state_into(
            lambda rngs: cls(config, rngs=rngs, dtype=dtype),
            state,
            what=f"{cls.__name__} ({folder})",
            dtype=param_dtype,
            ignore=cls.ignore_keys,
            rename=None if prefixed else _strip_prefix,
        )

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write a folder transformers' `from_pretrained` reads (hub key layout)."""
        folder = super().save_pretrained(folder)
        config = {"architectures": [type(self).__name__], "model_type": "clip_text_model",
                  **asdict(self.config)}  # type: ignore[attr-defined]
        (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        return folder


def _strip_prefix(key: str) -> str:
    return key.removeprefix(_PREFIX)


class CLIPTextModel(_CLIPPretrained, nnx.Module):
    """transformers' `CLIPTextModel` (Stable Diffusion's `text_encoder`)."""

    def __init__(self, config: CLIPTextConfig, *, rngs: nnx.Rngs, dtype: jnp.dtype = jnp.float32):
        self.config = config
        self.text_model = CLIPTextTransformer(config, rngs=rngs, dtype=dtype)

    def __call__(self, input_ids: jax.Array, output_hidden_states: bool = False) -> CLIPTextOutput:
        """`input_ids [N, T]` -> `CLIPTextOutput` (`text_embeds` is None)."""
        return self.text_model(input_ids, output_hidden_states)


class CLIPTextModelWithProjection(_CLIPPretrained, nnx.Module):
    """transformers' `CLIPTextModelWithProjection` (SDXL's `text_encoder_2`)."""

    def __init__(self, config: CLIPTextConfig, *, rngs: nnx.Rngs, dtype: jnp.dtype = jnp.float32):
        self.config = config
        self.text_model = CLIPTextTransformer(config, rngs=rngs, dtype=dtype)
        self.text_projection = nnx.Linear(config.hidden_size, config.projection_dim,
                                          use_bias=False, dtype=dtype, rngs=rngs)

    def __call__(self, input_ids: jax.Array, output_hidden_states: bool = False) -> CLIPTextOutput:
        """`input_ids [N, T]` -> `CLIPTextOutput` with `text_embeds [N, projection_dim]`."""
        out = self.text_model(input_ids, output_hidden_states)
        return out._replace(text_embeds=self.text_projection(out.pooler_output))
