"""dreamlayer_jax.attention."""
