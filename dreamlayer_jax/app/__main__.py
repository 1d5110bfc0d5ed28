"""`python -m dreamlayer_jax.app`: see `dreamlayer_jax.app.server`."""

from dreamlayer_jax.app.server import main

if __name__ == "__main__":
    raise SystemExit(main())
