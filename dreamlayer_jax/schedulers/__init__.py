"""dreamlayer_jax.schedulers."""
