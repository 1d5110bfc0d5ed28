"""dreamlayer_jax.eval."""
