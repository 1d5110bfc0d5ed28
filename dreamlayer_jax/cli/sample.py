"""`dreamlayer-sample` / `python sample.py`: generate a scene as layers.

    python sample.py                                   # the default scene, built-in model
    python sample.py --prompt "..." --background "..." --layer "a red star@0.1,0.5,0.45,0.9"
    python sample.py --scene scene.json --model path/or/hub-id --steps 30 --out out/
    python sample.py decompose IMAGE --layer "text@x0,y0,x1,y1" --background TEXT
    python sample.py edit DIR --move 1:+0.1,-0.05 --scale 2:1.2 --delete 3 --out NEWDIR

Bad input is one line on stderr and exit code 2, and nothing is written.
"""

from __future__ import annotations

import time
from pathlib import Path

from dreamlayer_jax.cli.common import ArgumentParser, check_output_folder, parse_box, run_cli
from dreamlayer_jax.errors import InputError
from dreamlayer_jax.pipeline.scene import FULL_BOX, Layer, Scene

DEFAULT_SCENE = Scene(
    prompt="a small red star and a large green ring in front of a striped blue wall at sunset",
    background="a striped blue wall at sunset",
    layers=(Layer("a small red star", (0.1, 0.45, 0.5, 0.9)),
            Layer("a large green ring", (0.45, 0.15, 0.95, 0.7))),
)


def parse_layer_arg(text: str) -> Layer:
    """`"a red ball@0.1,0.5,0.45,0.9"` -> Layer; without `@box` the whole canvas."""
    prompt, sep, box = text.rpartition("@")
    if not sep:
        return Layer(text.strip(), FULL_BOX)
    return Layer(prompt.strip(), parse_box(box, f"--layer {text!r}"))


def _add_sampling_args(p: ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="model folder or hub id (default: built-in)")
    p.add_argument("--steps", type=int, default=30, help="denoising steps")
    p.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scheduler", default=None, help="ddim | ddpm | euler | euler_a | dpm++2m")
    p.add_argument("--out", type=Path, default=None, help="output folder (new or empty)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="dreamlayer-sample", description=__doc__.split("\n\n")[0])
    p.add_argument("--prompt", help="the global prompt (the whole picture)")
    p.add_argument("--background", help="the background's prompt")
    p.add_argument("--layer", action="append", default=[], metavar="TEXT@x0,y0,x1,y1",
                   help="a foreground (repeat; paint order = order given)")
    p.add_argument("--scene", type=Path, help="a scene.json instead of --prompt/--layer")
    _add_sampling_args(p)
    p.add_argument("--no-caca", action="store_true", help="switch off CACA")
    p.add_argument("--no-lssa", action="store_true", help="switch off LSSA")
    p.add_argument("--no-irh", action="store_true", help="switch off IRH")
    p.add_argument("--irh-start", type=float, default=None)
    p.add_argument("--irh-retain", type=float, default=None)
    return p


def scene_from_args(args) -> Scene:
    if args.scene is not None:
        if args.prompt or args.background or args.layer:
            raise InputError("--scene cannot be combined with --prompt/--background/--layer")
        return Scene.from_json(args.scene)
    if args.prompt is None and args.background is None and not args.layer:
        return DEFAULT_SCENE
    if args.prompt is None or args.background is None:
        raise InputError("--prompt and --background are both needed (or --scene)")
    return Scene(args.prompt, args.background, tuple(parse_layer_arg(t) for t in args.layer))


def _check_common(args) -> None:
    if args.steps < 1:
        raise InputError(f"--steps must be a positive integer, got {args.steps}")
    if not args.guidance >= 0:
        raise InputError(f"--guidance must be >= 0, got {args.guidance}")
    for name in ("irh_start", "irh_retain"):
        value = getattr(args, name, None)
        if value is not None and not 0.0 <= value <= 1.0:
            raise InputError(f"--{name.replace('_', '-')} must be in [0, 1], got {value}")


def default_out() -> Path:
    return Path("out") / time.strftime("scene-%Y%m%d-%H%M%S")


def _generate(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    _check_common(args)
    scene = scene_from_args(args)
    out = args.out or default_out()
    check_output_folder(out)
    from dreamlayer_jax.pipeline.dreamlayer import DreamLayerPipeline

    pipe = DreamLayerPipeline.from_pretrained(args.model, scheduler=args.scheduler)
    result = pipe(scene, num_inference_steps=args.steps, guidance_scale=args.guidance,
                  seed=args.seed, caca=not args.no_caca, lssa=not args.no_lssa,
                  irh=not args.no_irh, irh_start=args.irh_start, irh_retain=args.irh_retain,
                  progress=not args.no_progress)
    saved = result.save(out)
    print(f"wrote {len(result.layers)} foreground layers, background and composite to {saved}/")
    for name in sorted(p.name for p in saved.iterdir()):
        print(f"  {saved / name}")
    return 0


def _main(argv: list[str] | None) -> int:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("decompose", "edit"):
        from dreamlayer_jax.cli.sample_edit import decompose_main, edit_main

        return (decompose_main if argv[0] == "decompose" else edit_main)(argv[1:])
    return _generate(argv)


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
