"""Train-step throughput on this machine: steps/s and examples/s.

    python benchmarks/train_step.py                        # tiny and SD1.5-sized, 16 px
    python benchmarks/train_step.py --configs sd15 --res 32 # SD1.5-sized UNet at 32x32 pixels
    python benchmarks/train_step.py --train-params dreamlayer --lora-rank 32  # LoRA fine-tune

Random model folders are written to a temporary directory; the first step (compile) is
reported separately and excluded from the throughput.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SD15_TEXT, format_table, sd15_unet  # noqa: E402


def measure(name: str, unet: dict, text: dict, args: argparse.Namespace) -> list[str]:
    """One row: the first step (compile + run) and the steady steps/s and examples/s."""
    from tiny_model import TINY_SCHEDULER, WORDS

    from dreamlayer_jax.parallel.mesh import make_mesh
    from dreamlayer_jax.pipeline.create import create_model_folder
    from dreamlayer_jax.training.config import TrainConfig
    from dreamlayer_jax.training.loop import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        model = create_model_folder(
            Path(tmp) / "model", unet=unet, text_encoder=text, words=WORDS,
            dreamlayer={"max_layers": args.layers, "codec": "pixel", "resolution": args.res,
                        "lora_rank": args.lora_rank},
            scheduler=TINY_SCHEDULER)
        cfg = TrainConfig(model=str(model), batch_size=args.batch, max_layers=args.layers,
                          synthetic_scenes=max(8, args.batch), synthetic_resolution=args.res,
                          num_steps=args.steps + 1, progress=False, export=False,
                          train_params=args.train_params,
                          compute_dtype="bfloat16" if args.bf16 else "float32")
        trainer = Trainer(cfg, Path(tmp) / "run",
                          mesh=make_mesh(1, 1, 1, devices=jax.devices()[:1]))
        batch = trainer.device_batch(next(trainer.make_iterator()))
        state = trainer.initial_state()
        t0 = time.perf_counter()
        state, metrics = trainer.step_fn(state, trainer.text_params, batch)
        jax.block_until_ready(metrics)
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(args.steps):
            state, metrics = trainer.step_fn(state, trainer.text_params, batch)
        jax.block_until_ready((state, metrics))
        dt = time.perf_counter() - t0
    row = [name, args.train_params, f"{args.res}", f"{args.batch}", f"{args.layers}",
           "bf16" if args.bf16 else "f32", f"{compile_s:.1f}", f"{dt / args.steps:.2f}",
           f"{args.steps / dt:.3f}", f"{args.steps * args.batch / dt:.3f}"]
    print(" | ".join(row), flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default="tiny,sd15",
                   help="comma-separated: tiny (tests/tiny_model.py), sd15 (SD1.5-sized UNet)")
    p.add_argument("--res", type=int, default=16, help="scene resolution in pixels (>= 16)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--train-params", choices=("all", "dreamlayer"), default="all",
                   help="dreamlayer: LoRA + role embedding on a frozen base (configs/sd15.py)")
    p.add_argument("--lora-rank", type=int, default=0)
    args = p.parse_args()
    from tiny_model import TINY_TEXT, TINY_UNET

    models = {"tiny": (TINY_UNET, TINY_TEXT), "sd15": (sd15_unet(args.res), SD15_TEXT)}
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = sorted(set(names) - set(models))
    if unknown:
        p.error(f"unknown configs {unknown}; choose from {sorted(models)}")
    print(f"device: {jax.devices()[0].device_kind}, {args.steps} timed steps after the first",
          flush=True)
    headers = ["model", "trains", "px", "B", "L", "dtype", "first step s", "s/step", "steps/s",
               "examples/s"]
    rows = [measure(name, *models[name], args) for name in names]
    print()
    print(format_table(headers, rows))


if __name__ == "__main__":
    main()
