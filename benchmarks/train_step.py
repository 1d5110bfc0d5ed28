"""Train-step throughput on this machine: steps/s and examples/s.

    python benchmarks/train_step.py                 # the tiny model (tests/tiny_model.py)
    python benchmarks/train_step.py --sd15 --res 64 # an SD1.5-sized UNet at 64x64 pixels

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
from common import SD15_TEXT, sd15_unet  # noqa: E402

SD15_UNET = sd15_unet(64)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sd15", action="store_true", help="SD1.5-sized UNet (pixel codec)")
    p.add_argument("--res", type=int, default=16, help="scene resolution in pixels (>= 16)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--bf16", action="store_true")
    args = p.parse_args()

    from tiny_model import TINY_SCHEDULER, TINY_TEXT, TINY_UNET, WORDS

    from dreamlayer_jax.parallel.mesh import make_mesh
    from dreamlayer_jax.pipeline.create import create_model_folder
    from dreamlayer_jax.training.config import TrainConfig
    from dreamlayer_jax.training.loop import Trainer

    unet, text = (SD15_UNET, SD15_TEXT) if args.sd15 else (TINY_UNET, TINY_TEXT)
    with tempfile.TemporaryDirectory() as tmp:
        model = create_model_folder(
            Path(tmp) / "model", unet=unet, text_encoder=text, words=WORDS,
            dreamlayer={"max_layers": args.layers, "codec": "pixel", "resolution": args.res},
            scheduler=TINY_SCHEDULER)
        cfg = TrainConfig(model=str(model), batch_size=args.batch, max_layers=args.layers,
                          synthetic_scenes=max(8, args.batch), synthetic_resolution=args.res,
                          num_steps=args.steps + 1, progress=False, export=False,
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
    name = "sd15-sized" if args.sd15 else "tiny"
    print(f"{name} {args.res}px B={args.batch} L={args.layers} on {jax.devices()[0].platform}: "
          f"first step {compile_s:.1f}s, {args.steps / dt:.2f} steps/s, "
          f"{args.steps * args.batch / dt:.2f} examples/s")


if __name__ == "__main__":
    main()
