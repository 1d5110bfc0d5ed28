"""`dreamlayer-sample` / `python sample.py`: generate a scene as layers.

Sub-commands (each has its own --help):
    python sample.py [FLAGS]             generate a scene (this help)
    python sample.py decompose IMAGE ... split a picture into layers
    python sample.py edit DIR ...        move / scale / flip / delete / reprompt / reorder
                                         the layers of a saved result

    python sample.py                                   # the default scene, built-in model
    python sample.py --background "..." --layer "a red star@0.1,0.5,0.45,0.9" [--prompt "..."]
    python sample.py --model PAPER_MODEL --layer "a red star" --background "a blue wall"
    python sample.py --scene scene.json --model path/or/hub-id --steps 30 --out out/
    python sample.py decompose IMAGE --layer "text@x0,y0,x1,y1" --background TEXT
    python sample.py edit DIR --move 1:+0.1,-0.05 --scale 2:1.2 --delete 3 --out NEWDIR

A box (`@x0,y0,x1,y1`) is required by box-variant models and optional with
paper-variant ones (a prior on the layer's context map there). Without `--prompt` the
global prompt is composed from the layers. Bad input is one line on stderr and exit
code 2, and nothing is written.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dreamlayer_jax.cli.common import (
    ArgumentParser,
    add_sampling_args,
    check_output_folder,
    check_sampling_args,
    default_out,
    layers_phrase,
    list_files,
    load_sampling_pipeline,
    parse_layer_arg,
    run_cli,
)
from dreamlayer_jax.errors import InputError
from dreamlayer_jax.models.tokenizer import warn_unknown_words
from dreamlayer_jax.pipeline.scene import Layer, Scene

if TYPE_CHECKING:
    from dreamlayer_jax.pipeline.dreamlayer import DreamLayerPipeline

DEFAULT_SCENE = Scene(
    prompt="a small red star and a large green ring in front of a striped blue wall at sunset",
    background="a striped blue wall at sunset",
    layers=(Layer("a small red star", (0.1, 0.45, 0.5, 0.9)),
            Layer("a large green ring", (0.45, 0.15, 0.95, 0.7))),
)


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="dreamlayer-sample",
                       description="\n\n".join(__doc__.split("\n\n")[:2]),
                       epilog=__doc__.split("\n\n", 3)[3])
    p.add_argument("--prompt", help="the global prompt (the whole picture); default: "
                                    "composed from the layers (the paper variant reads the "
                                    "layers' prompts instead)")
    p.add_argument("--background", help="the background's prompt")
    p.add_argument("--layer", action="append", default=[], metavar="TEXT[@x0,y0,x1,y1]",
                   help="a foreground (repeat; paint order = order given); the box is "
                        "optional with paper-variant models")
    p.add_argument("--scene", type=Path, help="a scene.json instead of --prompt/--layer")
    add_sampling_args(p)
    p.add_argument("--no-caca", action="store_true",
                   help="switch off CACA (context-aware cross-attention)")
    p.add_argument("--no-lssa", action="store_true",
                   help="switch off LSSA (layer-shared self-attention)")
    p.add_argument("--no-irh", action="store_true",
                   help="switch off IRH (the global layer's re-harmonization)")
    p.add_argument("--irh-start", type=float, default=None, metavar="FRACTION",
                   help="box variant: where IRH starts, a fraction of the steps counted "
                        "from the end, in [0, 1] (default: the model's)")
    p.add_argument("--irh-retain", type=float, default=None, metavar="WEIGHT",
                   help="box variant: how hard IRH holds the layers' composite, in [0, 1] "
                        "(default: the model's)")
    p.add_argument("--irh-restart", type=float, default=None, metavar="T",
                   help="paper variant: T_H, the timestep (0-1000) IRH re-denoises from "
                        "(default: the model's)")
    p.add_argument("--irh-stop", type=float, default=None, metavar="T",
                   help="paper variant: T_H', the timestep IRH pastes the layers until, "
                        "<= T_H (default: the model's)")
    p.add_argument("--guidance-min-timestep", type=float, default=None, metavar="T",
                   help="classifier-free guidance only at timesteps >= T (0-1000), the "
                        "conditional prediction alone below (default: the model's; 0 = "
                        "every step)")
    return p


def scene_from_args(args: argparse.Namespace) -> Scene:
    if args.scene is not None:
        if args.prompt is not None or args.background is not None or args.layer:
            raise InputError("--scene cannot be combined with --prompt/--background/--layer")
        return Scene.from_json(args.scene)
    if args.prompt is None and args.background is None and not args.layer:
        return DEFAULT_SCENE
    if args.prompt is not None and not args.prompt.strip():
        raise InputError("--prompt must be a non-empty string (leave it out to compose the "
                         "global prompt from the layers)")
    if args.background is None:
        raise InputError("--background is needed with --prompt or --layer (or give --scene)")
    return Scene(args.prompt or "", args.background,
                 tuple(parse_layer_arg(t) for t in args.layer))


def warn_ignored_prompt(pipe: DreamLayerPipeline, args: argparse.Namespace) -> None:
    """A --prompt given to a paper-variant model: recorded, but its global layer reads
    the layers' prompts (too many layers, a box-variant model given a layer without a
    box, too long a concatenation and IRH's window against the model's are refused by
    the pipeline itself, before sampling)."""
    if pipe.config.variant == "paper" and args.prompt is not None:
        warnings.warn("the paper variant's global layer reads the layers' prompts "
                      "concatenated: --prompt is only recorded", stacklevel=2)


def pipeline_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of `DreamLayerPipeline.__call__` the flags set (None: the
    model's value)."""
    return {"num_inference_steps": args.steps, "guidance_scale": args.guidance,
            "seed": args.seed, "caca": not args.no_caca, "lssa": not args.no_lssa,
            "irh": not args.no_irh, "irh_start": args.irh_start,
            "irh_retain": args.irh_retain, "irh_restart": args.irh_restart,
            "irh_stop": args.irh_stop, "progress": not args.no_progress,
            "guidance_min_timestep": args.guidance_min_timestep}


def _generate(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    check_sampling_args(args)
    scene = scene_from_args(args)
    out = args.out or default_out()
    check_output_folder(out)

    pipe = load_sampling_pipeline(args)
    warn_ignored_prompt(pipe, args)
    warn_unknown_words(pipe.conditioner.tokenizers[0], scene.prompts)
    result = pipe(scene, **pipeline_kwargs(args))
    saved = result.save(out)
    print(f"wrote {layers_phrase(len(result.layers))}, background and composite to {saved}/")
    list_files(saved)
    return 0


def _main(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("decompose", "edit"):
        from dreamlayer_jax.cli.sample_edit import decompose_main, edit_main

        return (decompose_main if argv[0] == "decompose" else edit_main)(argv[1:])
    return _generate(argv)


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
