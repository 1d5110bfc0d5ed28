"""dreamlayer_jax.data."""
