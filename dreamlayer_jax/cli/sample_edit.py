"""`sample.py decompose IMAGE ...` and `sample.py edit DIR ...`.

`cli.sample` dispatches here; this module imports only `cli.common` at load time.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from argparse import BooleanOptionalAction
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
)
from dreamlayer_jax.errors import InputError

if TYPE_CHECKING:
    from dreamlayer_jax.pipeline.scene import Scene

EDIT_HELP = """\
Layers are numbered from 1 (bottom foreground) as in the saved folder's layer_01.png,
layer_02.png, ...; the background and the global picture are not editable. Operations
apply in the order: moves, scales, flips, reprompts, deletions, then --order. A move
shifts by DX,DY fractions of the canvas (+0.1,-0.05: 10% right, 5% up), snapped to whole
latent pixels; a scale multiplies the layer's size about its box centre. The kept layers
are reused as saved; a reprompted one is regenerated; the global picture is
re-harmonized. The global prompt follows the edits: recomposed when it was composed from
the layers, the reprompted text substituted in a written one (or give --prompt).

    python sample.py edit out/a --move 1:+0.1,-0.05 --scale 1:1.2 --out out/b
    python sample.py edit out/a --reprompt "2:a green star" --delete 1 --out out/c
"""


def decompose_main(argv: list[str]) -> int:
    p = ArgumentParser(prog="dreamlayer-sample decompose",
                       description="Split a picture into layers (training-free): its "
                                   "background and the foregrounds you name.")
    p.add_argument("image", type=Path, help="the picture (PNG/JPEG; resized to the model's "
                                            "resolution with a warning)")
    p.add_argument("--layer", action="append", default=[], metavar="TEXT[@x0,y0,x1,y1]",
                   help="a foreground (repeat); box variant: no box = the whole picture")
    p.add_argument("--background", required=True, help="the background's prompt")
    p.add_argument("--prompt", default=None, help="the whole picture's prompt (default: "
                                                  "composed from the layers)")
    p.add_argument("--regenerate-background", action="store_true",
                   help="box variant: generate the whole background rather than keep the "
                        "picture outside the foregrounds' boxes (e.g. for shadows cast "
                        "beyond them)")
    p.add_argument("--matte", action=BooleanOptionalAction, default=None,
                   help="cut each foreground's outline and colours again from the picture "
                        "(default: on in the box variant, off in the paper variant)")
    p.add_argument("--eta", type=float, default=None,
                   help="DDIM's stochasticity for the generated layers (default: 1 in the "
                        "box variant, 0 in the paper variant)")
    add_sampling_args(p)
    args = p.parse_args(argv)
    check_sampling_args(args)
    if args.eta is not None and not args.eta >= 0.0:
        raise InputError(f"--eta must be >= 0, got {args.eta}")
    layers = [parse_layer_arg(t) for t in args.layer]
    out = args.out or default_out()
    check_output_folder(out)
    if not args.image.is_file():
        raise InputError(f"image {str(args.image)!r} does not exist")
    # Decoded here, before the model loads: a bad file fails at once, and every PNG
    # flavour (16-bit, palette, grayscale) becomes 8-bit RGBA the same way scene files do.
    from dreamlayer_jax.data.image_io import decode_image

    image = decode_image(args.image, str(args.image), channels=4)
    from dreamlayer_jax.models.tokenizer import warn_unknown_words
    from dreamlayer_jax.pipeline.decompose import decompose

    pipe = load_sampling_pipeline(args)
    warn_unknown_words(pipe.conditioner.tokenizers[0],
                       [args.background, *(layer.prompt for layer in layers),
                        *([args.prompt] if args.prompt else [])])
    result = decompose(pipe, image, layers, args.background, args.prompt,
                       num_inference_steps=args.steps, guidance_scale=args.guidance,
                       seed=args.seed, keep_background=not args.regenerate_background,
                       eta=args.eta, matte=args.matte,
                       progress=not args.no_progress)
    saved = result.save(out)
    print(f"decomposed {args.image} into the background and "
          f"{layers_phrase(len(result.layers))}: {saved}/")
    list_files(saved)
    return 0


def edit_parser() -> ArgumentParser:
    p = ArgumentParser(prog="dreamlayer-sample edit",
                       description="Edit a saved result in latent space and re-harmonize.",
                       epilog=EDIT_HELP)
    p.add_argument("dir", type=Path, help="a folder written by sample.py (or by edit / "
                                          "decompose): scene.json + latents.safetensors")
    p.add_argument("--move", action="append", default=[], metavar="I:DX,DY",
                   help="shift layer I by DX,DY canvas fractions (x right, y down), "
                        "snapped to the latent grid (repeatable)")
    p.add_argument("--scale", action="append", default=[], metavar="I:FACTOR",
                   help="scale layer I by FACTOR about its box centre (repeatable)")
    p.add_argument("--flip", action="append", default=[], metavar="I",
                   help="mirror layer I left-right (repeatable)")
    p.add_argument("--delete", action="append", default=[], metavar="I",
                   help="remove layer I (repeatable)")
    p.add_argument("--reprompt", action="append", default=[], metavar="I:TEXT",
                   help="regenerate layer I from TEXT (repeatable)")
    p.add_argument("--order", default=None, metavar="I,J,...",
                   help="new paint order, bottom first, as the saved indices")
    p.add_argument("--prompt", default=None,
                   help="the new global prompt (default: updated from the edits)")
    p.add_argument("--model", default=None, help="the model (default: the one scene.json "
                                                 "records, i.e. the one that made it)")
    p.add_argument("--steps", type=int, default=None,
                   help="denoising steps (default: the saved scene's)")
    p.add_argument("--seed", type=int, default=None, help="seed (default: the saved scene's)")
    p.add_argument("--out", type=Path, required=True, help="a new (or empty) folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def recorded_model(folder: Path) -> str | None:
    """The model scene.json records, as a loadable path or id: `"builtin"`,
    `"builtin:paper"` ... as they are, else its `"model_path"` (absolute) if that
    exists, else `"model"` as given."""
    try:
        record = json.loads((folder / "scene.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # the edit itself says what is wrong with the folder
    model = record.get("model") if isinstance(record, dict) else None
    if not isinstance(model, str) or not model:
        return None
    from dreamlayer_jax.pipeline.builtin import builtin_name, builtin_variant

    if builtin_variant(model) is not None:
        return model

    absolute = record.get("model_path")
    for candidate in (absolute, model):
        if isinstance(candidate, str) and Path(candidate).expanduser().exists():
            path = Path(candidate).expanduser()
            return builtin_name(path) or candidate
    if Path(model).is_absolute() or model.startswith("."):
        raise InputError(f"{folder}/scene.json records the model {model!r}, which is not "
                         "here: pass the model that made it with --model")
    return model  # a hub id


def updated_prompt(old: Scene, new: Scene, ops: list[Any]) -> str:
    """The global prompt after `ops`: recomposed when `old.prompt` was composed from its
    layers; otherwise reprompted texts substituted, and a warning for what still names
    a deleted or reprompted layer."""
    from dreamlayer_jax.pipeline.edit_ops import Delete, Reprompt
    from dreamlayer_jax.pipeline.scene import compose_prompt

    if old.prompt == compose_prompt(old.background, old.layers):
        return compose_prompt(new.background, new.layers)
    prompt, stale = old.prompt, []
    for op in ops:
        if not isinstance(op, Reprompt | Delete) or not 1 <= op.index <= len(old.layers):
            continue
        text = old.layers[op.index - 1].prompt
        if isinstance(op, Reprompt) and text in prompt:
            prompt = prompt.replace(text, op.prompt)
        elif isinstance(op, Delete) and text in prompt:
            stale.append(text)
    if stale:
        warnings.warn(f"the global prompt {prompt!r} may still describe "
                      f"{', '.join(repr(t) for t in stale)}: give --prompt to reword it",
                      stacklevel=2)
    return prompt


def edit_main(argv: list[str]) -> int:
    args = edit_parser().parse_args(argv)
    from dreamlayer_jax.pipeline.edit_ops import parse_edit_ops

    ops = parse_edit_ops(move=args.move, scale=args.scale, delete=args.delete,
                         reprompt=args.reprompt, order=args.order, flip=args.flip)
    if not ops and args.prompt is None:
        raise InputError("nothing to do: give --move, --scale, --flip, --delete, --reprompt, "
                         "--order or --prompt")
    if args.steps is not None and args.steps < 1:
        raise InputError(f"--steps must be a positive integer, got {args.steps}")
    if args.prompt is not None and not args.prompt.strip():
        raise InputError("--prompt must be a non-empty string")
    check_output_folder(args.out)
    if not args.dir.is_dir():
        raise InputError(f"saved scene folder {str(args.dir)!r} does not exist")
    model = args.model if args.model is not None else recorded_model(args.dir)
    from dreamlayer_jax.models.tokenizer import warn_unknown_words
    from dreamlayer_jax.pipeline.dreamlayer import DreamLayerPipeline
    from dreamlayer_jax.pipeline.edit import edit, edit_stack, load_saved

    pipe = DreamLayerPipeline.from_pretrained(model)
    try:
        scene, latents, _ = load_saved(pipe, args.dir)
    except InputError as exc:
        if "latents of shape" not in str(exc):
            raise
        raise InputError(f"{exc}: it was made by another model; pass that one with "
                         "--model") from None
    new_scene = edit_stack(pipe, scene, latents, list(ops)).scene  # bad ops fail here
    prompt = args.prompt or updated_prompt(scene, new_scene, list(ops))
    warn_unknown_words(pipe.conditioner.tokenizers[0],
                       [prompt, *(layer.prompt for layer in new_scene.layers)])
    with tempfile.TemporaryDirectory(prefix=".dreamlayer-edit-") as tmp:
        source = args.dir
        if prompt != scene.prompt:  # the edit reads the global prompt from scene.json
            source = Path(tmp) / "saved"
            source.mkdir()
            record = json.loads((args.dir / "scene.json").read_text(encoding="utf-8"))
            record["prompt"] = prompt
            (source / "scene.json").write_text(json.dumps(record, indent=2) + "\n")
            shutil.copy2(args.dir / "latents.safetensors", source / "latents.safetensors")
        result = edit(pipe, source, ops, None, num_inference_steps=args.steps,
                      seed=args.seed, progress=not args.no_progress)
    result.info["edited_from"] = str(args.dir)
    if args.model is not None:  # otherwise the saved scene's record is carried over
        result.info.pop("model_path", None)
        result.info["model"] = pipe.name
    saved = result.save(args.out)
    print(f"edited {args.dir} ({len(ops)} operations): {saved}/ "
          f"({layers_phrase(len(result.layers))}; global prompt {result.scene.prompt!r})")
    list_files(saved)
    return 0
