"""Sample a layered scene: `python sample.py --help`."""

from dreamlayer_jax.cli.sample import main

if __name__ == "__main__":
    raise SystemExit(main())
