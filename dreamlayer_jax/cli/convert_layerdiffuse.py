"""`python -m dreamlayer_jax.cli.convert_layerdiffuse FILES... --out DIR`: LayerDiffuse's
released files -> one diffusers-style folder.

Each file is recognised by its keys (transparent decoder, offset encoder, SDXL attention
LoRA `::lora::`, SDXL `::diff::` deltas), checked (readable, no NaN/Inf, the decoder and
encoder fit their models), and copied unchanged into its part folder with a config.json:

    DIR/config.json                  {"_class_name": "LayerDiffuse", "parts": ..., ...}
    DIR/transparent_decoder/         UNet1024 config + diffusion_pytorch_model.safetensors
    DIR/transparent_encoder/         offset encoder config + weights
    DIR/unet_lora/, DIR/unet_diff/   SDXL UNet patches (`merge_layerdiffuse_attention`)

`DIR` is what `LatentCodec`'s transparency mode "layerdiffuse" loads
(`codecs.layerdiffuse.load_transparency(..., transparency=DIR)`). Bad input is one line
on stderr and exit code 2; `DIR` appears complete or not at all.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from dreamlayer_jax.cli.common import ArgumentParser, check_output_folder, run_cli
from dreamlayer_jax.errors import InputError

PATCH_CLASS = "LayerDiffuseUNetPatch"


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="dreamlayer-convert-layerdiffuse",
                       description="LayerDiffuse's released .safetensors files -> one "
                                   "diffusers-style folder")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE",
                   help="LayerDiffuse .safetensors files (decoder, encoder, UNet patches)")
    p.add_argument("--out", type=Path, required=True, help="output folder (new or empty)")
    return p


def _part_config(kind: str, source: Path) -> dict[str, Any]:
    from dreamlayer_jax.models.transparent_encoder import OffsetEncoderConfig
    from dreamlayer_jax.models.transparent_vae import UNet1024Config

    if kind == "decoder":
        config = {"_class_name": "UNet1024", **asdict(UNet1024Config())}
    elif kind == "encoder":
        config = {"_class_name": "LatentTransparencyOffsetEncoder",
                  **asdict(OffsetEncoderConfig())}
    else:
        config = {"_class_name": PATCH_CLASS, "kind": kind, "base": "sdxl"}
    return {**config, "source_file": source.name}


def check_files(files: list[Path]) -> dict[str, Path]:
    """`{kind: file}` for the given files, each validated; `WeightsError`/`InputError`."""
    from dreamlayer_jax.io.layerdiffuse import (
        identify,
        load_transparent_decoder,
        load_transparent_encoder,
        read_layerdiffuse_file,
    )

    found: dict[str, Path] = {}
    for file in files:
        if not file.is_file():
            raise InputError(f"{str(file)!r} is not a file")
        kind = identify(read_layerdiffuse_file(file), repr(str(file)))
        if kind in found:
            raise InputError(f"two LayerDiffuse {kind} files given: {str(found[kind])!r} and "
                             f"{str(file)!r} (convert them into separate folders)")
        found[kind] = file
    if "decoder" in found:
        load_transparent_decoder(found["decoder"])
    if "encoder" in found:
        load_transparent_encoder(found["encoder"])
    return found


def write_folder(found: dict[str, Path], out: Path) -> None:
    """Write the converted folder for `found` (from `check_files`) at `out`, atomically."""
    from dreamlayer_jax.io.atomic import staged_folder
    from dreamlayer_jax.io.layerdiffuse import FOLDER_CLASS, PARTS, WEIGHTS_NAME

    with staged_folder(out, "the converted folder") as tmp:
        for kind, file in found.items():
            part = tmp / PARTS[kind]
            part.mkdir()
            shutil.copyfile(file, part / WEIGHTS_NAME)
            (part / "config.json").write_text(json.dumps(_part_config(kind, file), indent=2)
                                              + "\n")
        root = {"_class_name": FOLDER_CLASS,
                "parts": {kind: PARTS[kind] for kind in found},
                "source_files": {kind: file.name for kind, file in found.items()}}
        (tmp / "config.json").write_text(json.dumps(root, indent=2) + "\n")


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    check_output_folder(args.out)
    found = check_files(args.files)
    write_folder(found, args.out)
    print(f"wrote {', '.join(sorted(found))} to {args.out}/")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
