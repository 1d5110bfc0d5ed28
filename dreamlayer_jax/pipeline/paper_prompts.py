"""The paper variant's prompts: the global layer reads the layers' prompts, concatenated.

The global layer has no prompt of its own (DESIGN.md section 8): its token ids are
`[SOS]`, the background's tokens, each foreground's tokens in slot order, `[EOS]`, then
padding, i.e. every valid layer's span between its own `[SOS]` and `[EOS]`. The slot
each global token came from (`token_owner`) is what the context maps sum over.

Pure jnp functions of token ids, so sampling (on the host) and the train step (traced,
the ids come from the batch) build the global prompt the same way. A concatenation
longer than the encoder's length is never cut silently: sampling refuses it
(`check_overflow`), the train step counts it in its metrics.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from dreamlayer_jax.errors import InputError


@struct.dataclass
class LayerTokens:
    """The token ids of a batch of scenes with the global slot rebuilt.

    Attributes:
      ids: `int32[B, L, T]`, slot `L-1` the concatenation of the valid layers' prompts.
      token_owner: `int32[B, T]` the slot of each global token; -1 for specials, padding.
      own_tokens: `bool[B, L, T]` each slot's own prompt tokens (no [SOS], [EOS], padding).
      lengths: `int32[B]` tokens the concatenation needs, [SOS] and [EOS] included.
    """

    ids: jax.Array
    token_owner: jax.Array
    own_tokens: jax.Array
    lengths: jax.Array


def prompt_lengths(ids: jax.Array, eos_id: int) -> jax.Array:
    """`int32[...]`: the number of prompt tokens of each row `ids[..., T]` (between the
    leading [SOS] and the first [EOS]; a row without [EOS] counts to its end)."""
    body = ids[..., 1:] == eos_id
    found = body.any(axis=-1)
    return jnp.where(found, jnp.argmax(body, axis=-1), ids.shape[-1] - 1).astype(jnp.int32)


def concat_layer_tokens(ids: jax.Array, layer_valid: jax.Array, *, eos_id: int,
                        pad_id: int) -> LayerTokens:
    """Rebuild the global slot of `ids[B, L, T]` from the valid layers' prompts.

    Slots `0 .. L-2` (background, foregrounds) keep their ids; slot `L-1` becomes
    `[SOS] t_0 t_1 .. t_{L-2} [EOS] pad..`, cut at `T` if too long (`lengths` tells).
    """
    _, num_layers, length = ids.shape
    lengths = prompt_lengths(ids, eos_id)  # [B, L]
    positions = jnp.arange(length)
    own = (positions >= 1) & (positions <= lengths[..., None])  # [B, L, T]
    own = own & layer_valid[..., None]
    parts = jnp.where(layer_valid[:, :-1], lengths[:, :-1], 0)  # [B, L-1]
    ends = jnp.cumsum(parts, axis=-1)  # exclusive upper bound of each slot's span
    total = ends[:, -1]

    def one(ids_b, ends_b, parts_b, total_b):
        flat = positions - 1  # index into the concatenated bodies, per output position
        slot = jnp.searchsorted(ends_b, flat, side="right")
        slot = jnp.minimum(slot, num_layers - 2)
        offset = flat - (ends_b[slot] - parts_b[slot])
        token = ids_b[slot, jnp.clip(offset + 1, 0, length - 1)]
        body = (positions >= 1) & (flat < total_b)
        out = jnp.where(body, token, pad_id)
        out = jnp.where(positions == jnp.minimum(total_b + 1, length - 1), eos_id, out)
        out = out.at[0].set(ids_b[0, 0])
        owner = jnp.where(body & (positions < length - 1), slot, -1)
        return out, owner

    global_ids, owner = jax.vmap(one)(ids, ends, parts, total)
    new_ids = ids.at[:, -1].set(global_ids.astype(ids.dtype))
    own = own.at[:, -1].set(owner >= 0)
    return LayerTokens(ids=new_ids, token_owner=owner.astype(jnp.int32), own_tokens=own,
                       lengths=(total + 2).astype(jnp.int32))


def check_overflow(tokens: LayerTokens, max_length: int) -> None:
    """Raise `InputError` when a scene's concatenated prompt exceeds `max_length` tokens."""
    lengths = np.asarray(tokens.lengths)
    over = np.flatnonzero(lengths > max_length)
    if over.size:
        b = int(over[0])
        raise InputError(f"the layer prompts of scene {b + 1} add up to {int(lengths[b])} "
                         f"tokens with [SOS] and [EOS], but the global layer's concatenated "
                         f"prompt holds {max_length}: shorten the prompts")
