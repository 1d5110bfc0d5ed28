"""`dreamlayer-cache-latents`: encode a run's scenes once, for cached-latent training.

    python -m dreamlayer_jax.cli.cache_latents --config configs/sd15.py \\
        --set model=SD15_FOLDER data_dir=data/mine --out data/mine_cache
    python train.py --config configs/sd15.py --workdir runs/sd15 \\
        --set model=SD15_FOLDER data_cache=data/mine_cache

The config is the one you will train with: its model's codec (VAE) and text encoders
encode its scenes (`data_dir`'s `split`, or its in-memory synthetic scenes) once, into a
TFDS / array_record dataset at --out (latents of each slot and of its mirror image, each
slot's text embedding, SDXL's pooled text and time ids, the paper variant's token ids and
alphas, the empty prompt's embedding). Training with `data_cache=OUT` then skips the
encoders; a cache made by another model, codec, tokenizer or max_layers is refused.
Nothing is left at --out on error.
"""

from __future__ import annotations

import argparse
import sys

from dreamlayer_jax.cli.common import ArgumentParser, HelpFormatter, run_cli


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="dreamlayer-cache-latents", description=__doc__.split("\n")[0],
                       epilog=__doc__.split("\n\n", 1)[1], formatter_class=HelpFormatter)
    p.add_argument("--config", required=True, help="the configs/*.py file you train with")
    p.add_argument("--set", dest="overrides", action="append", nargs="+", default=[],
                   metavar="KEY=VALUE", help="override config fields, as train.py does")
    p.add_argument("--out", required=True, help="the cache folder to write (new or empty)")
    p.add_argument("--chunk", type=int, default=4, help="scenes encoded per call")
    return p


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    from dreamlayer_jax.training.config import load_config_file

    cfg = load_config_file(args.config, args.overrides)  # a bad config fails before jax
    from dreamlayer_jax.training.latent_cache import cache_latents

    def progress(done: int) -> None:
        print(f"\rencoded {done} scenes", end="", file=sys.stderr, flush=True)

    folder = cache_latents(cfg, args.out, chunk=args.chunk, progress=progress)
    print(file=sys.stderr)
    print(f"latent cache in {folder}; train with --set data_cache={args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Errors (bad flags included) are one line on stderr and exit code 2."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
