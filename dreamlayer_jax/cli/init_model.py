"""`python -m dreamlayer_jax.cli.init_model CONFIG OUT`: the model folder a config trains.

    python -m dreamlayer_jax.cli.init_model configs/builtin.py runs/builtin/init
    python -m dreamlayer_jax.cli.init_model configs/tiny.py runs/tiny/init
    python -m dreamlayer_jax.cli.init_model configs/sd15.py runs/sd15/init --base SD15_FOLDER

Which model is written:

- CONFIG defines an `ARCHITECTURE` dict (unet, text_encoder, dreamlayer, scheduler, and
  for an SDXL-style model text_encoder_2): a random init of it.
- `--base FOLDER` (a diffusers Stable Diffusion folder or a DreamLayer folder): that
  model with the config's `dreamlayer` fields applied (fresh LoRA / role embedding /
  paper parts), its other parts copied; where CONFIG's ARCHITECTURE reads longer text
  than FOLDER's, the text encoder gets the extra positions (how v2 of the built-in model
  starts from v1: `configs/builtin_v2.py`). Training can also start from FOLDER directly
  (`--set model=FOLDER`); this writes the starting point once.
- a latent-codec ARCHITECTURE (`dreamlayer.codec = "latent"`) also names its `vae`
  (a trained VAE folder, e.g. `cli.train_vae`'s, or a dict of VAEConfig fields) and
  optionally its `transparency` decoder (a folder, or UNet1024Config fields for a fresh
  LayerDiffuse decoder); `--vae` / `--transparency FOLDER` override them.
- a config that trains on in-memory synthetic scenes (it sets `synthetic_resolution`,
  as configs/tiny.py does): a small random model at that resolution.

The random models' word tokenizer keeps every word of the synthetic scenes' prompts
whole (other words fall back to letters, with a warning when sampling).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

from dreamlayer_jax.cli.common import ArgumentParser, check_output_folder, run_cli
from dreamlayer_jax.errors import ConfigError

SMALL_TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
              "num_attention_heads": 2, "max_position_embeddings": 64,
              "hidden_act": "quick_gelu"}
SMALL_SCHEDULER = {"_class_name": "DDIMScheduler", "num_train_timesteps": 1000,
                   "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
                   "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}
SMALL_PAPER = {"context_width": 16, "context_heads": 2, "context_layers": 1}


def small_architecture(resolution: int, dreamlayer: dict[str, Any]) -> dict[str, Any]:
    """A small random model (one UNet level, pixel codec unshuffled by 2) for configs
    that train on in-memory synthetic scenes of side `resolution`."""
    if resolution % 2:
        raise ConfigError(f"synthetic_resolution={resolution} must be even")
    fields = {"max_layers": 5, "codec": "pixel", "pixel_unshuffle": 2,
              "resolution": resolution, "box_margin": 0.0, **dreamlayer}
    if fields.get("variant") == "paper":
        fields = {**SMALL_PAPER, **fields}
    unet = {"sample_size": resolution // 2, "in_channels": 16, "out_channels": 16,
            "down_block_types": ["CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D"], "block_out_channels": [32],
            "layers_per_block": 1, "attention_head_dim": 8, "norm_num_groups": 8,
            "cross_attention_dim": SMALL_TEXT["hidden_size"]}
    return {"unet": unet, "text_encoder": SMALL_TEXT, "dreamlayer": fields,
            "scheduler": SMALL_SCHEDULER}


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


def from_base(base: str, out: Path, dreamlayer: dict[str, Any],
              text_length: int | None = None) -> None:
    """`base` with the config's DreamLayer fields, written as a model folder; with
    `text_length` longer than the base's, its text encoder gets the extra positions
    (`io.text_positions`: prompts that fit the old length are read exactly as before)."""
    from dreamlayer_jax.io import resolve_model_folder
    from dreamlayer_jax.io.text_positions import extend_text_positions
    from dreamlayer_jax.pipeline.components import load_dreamlayer_unet, save_dreamlayer_unet
    from dreamlayer_jax.training.loop import COPIED_PARTS

    folder = resolve_model_folder(base)
    unet = load_dreamlayer_unet(folder, overrides=dreamlayer)
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save_dreamlayer_unet(unet, tmp)
        for part in COPIED_PARTS:
            src = folder / part
            if src.is_dir():
                shutil.copytree(src, tmp / part, dirs_exist_ok=True)
            elif src.is_file():
                shutil.copy2(src, tmp / part)
        if text_length is not None and (tmp / "text_encoder").is_dir():
            extend_text_positions(tmp, text_length)
        if out.is_dir():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _main(argv: list[str] | None) -> int:
    p = ArgumentParser(prog="init_model", description=__doc__.split("\n")[0],
                       epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("config", type=Path, help="a configs/*.py file")
    p.add_argument("out", type=Path, help="the model folder to write (new or empty)")
    p.add_argument("--base", default=None, metavar="FOLDER",
                   help="start from this model folder or hub id instead of random weights")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    p.add_argument("--vae", default=None, metavar="FOLDER",
                   help="latent codec: this trained VAE folder (else ARCHITECTURE['vae'])")
    p.add_argument("--transparency", default=None, metavar="FOLDER",
                   help="latent codec: this transparency decoder folder (else "
                        "ARCHITECTURE['transparency'])")
    args = p.parse_args(argv)
    from dreamlayer_jax.training.config import load_config_module

    module = load_config_module(args.config)
    values = dict(module.get_config()) if hasattr(module, "get_config") else {}
    dreamlayer = dict(values.get("dreamlayer") or {})
    arch = getattr(module, "ARCHITECTURE", None)
    if args.base is None and not isinstance(arch, dict):
        if "synthetic_resolution" not in values:
            raise ConfigError(f"{args.config} defines no ARCHITECTURE and trains a Stable "
                              "Diffusion model: pass --base SD_FOLDER (or train from it "
                              "directly with --set model=SD_FOLDER)")
        arch = small_architecture(int(values["synthetic_resolution"]), dreamlayer)
    check_output_folder(args.out)
    if args.base is not None:
        length = (arch.get("text_encoder") or {}).get("max_position_embeddings") \
            if isinstance(arch, dict) else None
        from_base(args.base, args.out, dreamlayer, length)
        print(f"wrote {args.out}: {args.base} with the DreamLayer fields of {args.config}")
        return 0
    from dreamlayer_jax.pipeline.create import create_model_folder

    assert isinstance(arch, dict)
    create_model_folder(args.out, unet=arch["unet"], text_encoder=arch["text_encoder"],
                        words=synthetic_words(), dreamlayer=arch["dreamlayer"],
                        scheduler=arch["scheduler"],
                        text_encoder_2=arch.get("text_encoder_2"),
                        vae=args.vae or arch.get("vae"),
                        transparency=args.transparency or arch.get("transparency"),
                        seed=args.seed)
    print(f"wrote a random model to {args.out} (train it: python train.py --config "
          f"{args.config} --workdir WORKDIR --set model={args.out})")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
