"""Low-rank adapters (LoRA) on the attention projections of a UNet.

`apply_lora` swaps each attention's `to_q`, `to_k`, `to_v` and `to_out.0` for a
`LoRALinear` that keeps the base `kernel` / `bias` (same state-dict names) and adds
`lora_down` `[in, r]` and `lora_up` `[r, out]` (zero-initialised, so the function is
unchanged at first): `y = x W + b + (alpha / r) * x A B`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

PROJECTIONS = ("to_q", "to_k", "to_v")


class LoRALinear(nnx.Module):
    """A linear layer `x W + b` plus a rank-`r` update `(alpha / r) x A B`."""

    def __init__(self, base: nnx.Linear, rank: int, alpha: float, *, rngs: nnx.Rngs):
        self.kernel = base.kernel
        self.bias = base.bias
        self.dtype = base.dtype
        self.scale = alpha / rank
        self.lora_down = nnx.Linear(base.in_features, rank, use_bias=False, dtype=base.dtype,
                                    kernel_init=nnx.initializers.normal(1.0 / rank), rngs=rngs)
        self.lora_up = nnx.Linear(rank, base.out_features, use_bias=False, dtype=base.dtype,
                                  kernel_init=nnx.initializers.zeros, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = self.dtype or x.dtype
        y = jnp.dot(x.astype(dtype), self.kernel[...].astype(dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(dtype)
        return y + self.scale * self.lora_up(self.lora_down(x.astype(dtype)))


def apply_lora(module: nnx.Module, rank: int, alpha: float, *, rngs: nnx.Rngs) -> int:
    """Put LoRA on every attention projection inside `module`; returns how many."""
    count = 0
    for _, sub in list(module.iter_modules()):
        if not all(isinstance(getattr(sub, name, None), nnx.Linear) for name in PROJECTIONS):
            continue
        for name in PROJECTIONS:
            setattr(sub, name, LoRALinear(getattr(sub, name), rank, alpha, rngs=rngs))
        out = getattr(sub, "to_out", None)
        if out is not None and isinstance(out[0], nnx.Linear):
            out[0] = LoRALinear(out[0], rank, alpha, rngs=rngs)
        count += 1
    return count


def is_lora_path(path: tuple) -> bool:
    """Whether an nnx state path belongs to a LoRA adapter."""
    return any(str(p).startswith("lora_") for p in path)
