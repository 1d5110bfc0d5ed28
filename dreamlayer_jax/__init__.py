"""dreamlayer-jax: DreamLayer (ICCV 2025) multi-layer image generation in JAX / Flax NNX."""

__version__ = "0.1.0"
