"""`sample.py decompose IMAGE ...` and `sample.py edit DIR ...`.

`cli.sample` dispatches here; this module imports only `cli.common` (no cycle).
"""

from __future__ import annotations

from pathlib import Path

from dreamlayer_jax.cli.common import (
    ArgumentParser,
    add_sampling_args,
    check_output_folder,
    check_sampling_args,
    default_out,
    parse_layer_arg,
)
from dreamlayer_jax.errors import InputError


def decompose_main(argv: list[str]) -> int:
    p = ArgumentParser(prog="dreamlayer-sample decompose",
                       description="Split a picture into layers (training-free).")
    p.add_argument("image", type=Path, help="the picture (PNG/JPEG; resized to the model's "
                                            "resolution with a warning)")
    p.add_argument("--layer", action="append", default=[], metavar="TEXT[@x0,y0,x1,y1]",
                   help="a foreground (repeat); box variant: no box = the whole picture")
    p.add_argument("--background", required=True, help="the background's prompt")
    p.add_argument("--prompt", default=None, help="the whole picture's prompt")
    add_sampling_args(p)
    args = p.parse_args(argv)
    check_sampling_args(args)
    layers = [parse_layer_arg(t) for t in args.layer]
    out = args.out or default_out()
    check_output_folder(out)
    if not args.image.is_file():
        raise InputError(f"image {str(args.image)!r} does not exist")
    # Decoded here, before the model loads: a bad file fails at once, and every PNG
    # flavour (16-bit, palette, grayscale) becomes 8-bit RGBA the same way scene files do.
    from dreamlayer_jax.data.image_io import decode_image

    image = decode_image(args.image, str(args.image), channels=4)
    from dreamlayer_jax.pipeline.decompose import decompose
    from dreamlayer_jax.pipeline.dreamlayer import DreamLayerPipeline

    pipe = DreamLayerPipeline.from_pretrained(args.model, scheduler=args.scheduler)
    result = decompose(pipe, image, layers, args.background, args.prompt,
                            num_inference_steps=args.steps, guidance_scale=args.guidance,
                            seed=args.seed, progress=not args.no_progress)
    print(f"decomposed {args.image} into {len(result.layers)} layers: {result.save(out)}/")
    return 0


def edit_main(argv: list[str]) -> int:
    p = ArgumentParser(prog="dreamlayer-sample edit",
                       description="Edit a saved result in latent space and re-harmonize.")
    p.add_argument("dir", type=Path, help="a folder written by sample.py")
    p.add_argument("--move", action="append", default=[], metavar="I:DX,DY")
    p.add_argument("--scale", action="append", default=[], metavar="I:FACTOR")
    p.add_argument("--flip", action="append", default=[], metavar="I",
                   help="mirror a layer left-right")
    p.add_argument("--delete", action="append", default=[], metavar="I")
    p.add_argument("--reprompt", action="append", default=[], metavar="I:TEXT")
    p.add_argument("--order", default=None, metavar="I,J,...", help="new paint order")
    p.add_argument("--model", default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--out", type=Path, required=True, help="a new (or empty) folder")
    args = p.parse_args(argv)
    from dreamlayer_jax.pipeline.edit_ops import parse_edit_ops

    ops = parse_edit_ops(move=args.move, scale=args.scale, delete=args.delete,
                         reprompt=args.reprompt, order=args.order, flip=args.flip)
    if not ops:
        raise InputError("nothing to do: give --move, --scale, --flip, --delete, --reprompt "
                         "or --order")
    if args.steps is not None and args.steps < 1:
        raise InputError(f"--steps must be a positive integer, got {args.steps}")
    check_output_folder(args.out)
    from dreamlayer_jax.pipeline.dreamlayer import DreamLayerPipeline
    from dreamlayer_jax.pipeline.edit import edit

    pipe = DreamLayerPipeline.from_pretrained(args.model)
    result = edit(pipe, args.dir, ops, args.out, num_inference_steps=args.steps, seed=args.seed)
    print(f"edited {args.dir} ({len(ops)} operations): {args.out}/ "
          f"({len(result.layers)} foreground layers)")
    return 0
