"""dreamlayer_jax.training."""
