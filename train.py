"""Train DreamLayer: `python train.py --help`."""

from dreamlayer_jax.cli.train import main

if __name__ == "__main__":
    raise SystemExit(main())
