"""`python -m dreamlayer_jax.cli.import_layers FILES... --out DIR`: layered files -> scenes.

Each Photoshop (.psd) or OpenRaster (.ora) file given (a folder stands for the layered
files in it) becomes one scene folder `DIR/<file stem>/` (see `data/scene_folder.py`),
ready for the `dreamlayer_scenes` dataset builder. Unreadable files are skipped, each
named on stderr with its reason, and counted; the run fails (exit code 2, nothing
written) only when no file at all could be imported. `DIR` appears complete or not at
all.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from dreamlayer_jax.cli.common import ArgumentParser, check_output_folder, run_cli
from dreamlayer_jax.errors import DataError, OutputError


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="dreamlayer-import-layers",
                       description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    p.add_argument("files", nargs="+", type=Path, metavar="FILE",
                   help=".psd / .ora files, or folders holding them")
    p.add_argument("--out", type=Path, required=True, help="output folder (new or empty)")
    return p


def unique_names(paths: list[str]) -> list[str]:
    """Folder names from the source files' stems, made unique (`a`, `a-2`, ...)."""
    seen: dict[str, int] = {}
    names = []
    for path in paths:
        stem = Path(path).stem or "scene"
        seen[stem] = seen.get(stem, 0) + 1
        names.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return names


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    check_output_folder(args.out)
    from dreamlayer_jax.data.importers import import_layered_files
    from dreamlayer_jax.data.scene_folder import write_scene_folder

    scenes, report = import_layered_files(args.files)
    if not scenes:
        raise DataError(f"no layered file could be imported ({report.summary()})")
    for item in report.skipped:
        print(f"warning: skipped {item.reason}", file=sys.stderr)
    out = args.out
    parent = out.parent if str(out.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=parent))
    except OSError as exc:
        raise OutputError(f"cannot write to {str(parent)!r}: {exc.strerror}") from exc
    try:
        names = unique_names([scene.meta["source"] for scene in scenes])
        for scene, name in zip(scenes, names, strict=True):
            write_scene_folder(scene, tmp / name)
        if out.is_dir():
            out.rmdir()
        os.replace(tmp, out)
    except OSError as exc:
        raise OutputError(f"cannot write scenes to {str(out)!r}: {exc.strerror}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"imported {len(scenes)} scenes to {out}/ ({report.summary()})")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
