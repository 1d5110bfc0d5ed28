"""`python -m dreamlayer_jax.cli.train_vae OUT`: a small VAE for the synthetic layers.

    python -m dreamlayer_jax.cli.train_vae runs/vae --steps 600 --resolution 64

Trains `training.vae.SMALL_VAE` (or `--widths`) on synthetic scenes' layers flattened on
50% grey (backgrounds and composites as they are) with L1 + a small KL, and writes OUT
as a diffusers `vae/` folder (config.json with the measured `scaling_factor`, safetensors)
plus `train_vae.json`. Give it to a latent-codec model folder with `init_model
--vae OUT` or `pipeline.create.create_model_folder(vae=OUT)`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from dreamlayer_jax.cli.common import ArgumentParser, run_cli


def _main(argv: list[str] | None) -> int:
    p = ArgumentParser(prog="train_vae", description=__doc__.split("\n")[0],
                       epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("out", type=Path, help="the vae folder to write")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=16, help="images per step")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--kl-weight", type=float, default=1e-4)
    p.add_argument("--scenes", type=int, default=1024, help="in-memory training scenes")
    p.add_argument("--widths", type=int, nargs="*", default=None,
                   help="block_out_channels (default: SMALL_VAE's 16 32 64 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--init", default=None, metavar="FOLDER",
                   help="continue from this earlier export (its config wins over --widths)")
    args = p.parse_args(argv)
    from dreamlayer_jax.training.vae import SMALL_VAE, train_vae

    config = {}
    if args.widths:
        n = len(args.widths)
        config = {"block_out_channels": args.widths,
                  "down_block_types": SMALL_VAE["down_block_types"][:1] * n,
                  "up_block_types": SMALL_VAE["up_block_types"][:1] * n}
    record = train_vae(args.out, config=config, resolution=args.resolution, steps=args.steps,
                       batch=args.batch, learning_rate=args.lr, kl_weight=args.kl_weight,
                       scenes=args.scenes, seed=args.seed,
                       log_every=args.log_every, init=args.init)
    print(f"wrote {args.out}: held-out PSNR {record['held_out_psnr_db']:.1f} dB, "
          f"scaling_factor {1 / record['latent_std']:.4f}, {record['seconds'] / 60:.1f} min")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
