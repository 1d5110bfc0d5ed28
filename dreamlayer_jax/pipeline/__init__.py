"""dreamlayer_jax.pipeline."""
