"""dreamlayer_jax.codecs."""
