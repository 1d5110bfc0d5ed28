"""`python -m dreamlayer_jax.cli.init_model CONFIG OUT`: a random model folder to train.

CONFIG is a configs/*.py file with an `ARCHITECTURE` dict (unet, text_encoder, dreamlayer,
scheduler, and for an SDXL-style model text_encoder_2); the tokenizer keeps every word of
the synthetic scenes' prompts whole.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from dreamlayer_jax.cli.common import check_output_folder, run_cli
from dreamlayer_jax.errors import ConfigError


def synthetic_words(num_scenes: int = 2000, seed: int = 0) -> list[str]:
    """Every word that the synthetic generator's prompts use."""
    from dreamlayer_jax.data.synthetic import SyntheticSceneGenerator
    from dreamlayer_jax.data.synthetic_vocab import VOCABULARY

    gen = SyntheticSceneGenerator(resolution=16, max_foregrounds=3)
    words = set(VOCABULARY)
    for i in range(num_scenes):
        scene = gen.sample((seed, i))
        for text in (scene.prompt, scene.background_prompt, *scene.layer_prompts):
            words.update(text.lower().split())
    return sorted(words)


def _main(argv: list[str] | None) -> int:
    p = argparse.ArgumentParser(prog="init_model", description=__doc__.split("\n")[0])
    p.add_argument("config", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    spec = importlib.util.spec_from_file_location("_arch", args.config)
    if spec is None or not args.config.is_file():
        raise ConfigError(f"config file {args.config} does not exist")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    arch = getattr(module, "ARCHITECTURE", None)
    if not isinstance(arch, dict):
        raise ConfigError(f"{args.config} defines no ARCHITECTURE dict")
    check_output_folder(args.out)
    from dreamlayer_jax.pipeline.create import create_model_folder

    create_model_folder(args.out, unet=arch["unet"], text_encoder=arch["text_encoder"],
                        words=synthetic_words(), dreamlayer=arch["dreamlayer"],
                        scheduler=arch["scheduler"],
                        text_encoder_2=arch.get("text_encoder_2"), seed=args.seed)
    print(f"wrote a random model to {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
