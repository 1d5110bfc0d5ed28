"""`python -m dreamlayer_jax.cli.import_layers FILES... --out DIR`: layered files -> scenes.

Each Photoshop (.psd, .psb) or OpenRaster (.ora) file given, and each one found in the
folders given (searched recursively), becomes one scene folder `DIR/<file stem>/` (see
`data/scene_folder.py`), ready for the `dreamlayer_scenes` dataset builder, provided
its layers reproduce its own flattened picture (see `data/importers.py`). A folder
holding a scene.json is one scene `DIR/<folder name>/`: a `sample.py` result folder
(read from its layers.ora, with every prompt and box the file carries) or a scene folder
(`data/import_sources.py`). Files that cannot be read, or not imported faithfully, are
skipped, each named on stderr with its reason, and counted; the run fails (exit code 2,
nothing written), saying why, when nothing at all could be imported. `DIR` appears
complete or not at all.

`--check` writes nothing: it prints one line per file saying what would be imported
(its layers, what was baked into them, what was skipped) or why it is refused, for
curating a dataset folder.
"""

from __future__ import annotations

import sys
from pathlib import Path

from dreamlayer_jax.cli.common import ArgumentParser, check_output_folder, run_cli
from dreamlayer_jax.errors import DataError, InputError

DEFAULT_TOLERANCE = 6  # data.importers.TOLERANCE, without importing numpy for --help
SHOWN = 5  # reasons named in the error when nothing could be imported


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="dreamlayer-import-layers",
                       description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    p.add_argument("files", nargs="+", type=Path, metavar="FILE",
                   help=".psd / .psb / .ora files, result or scene folders, or folders "
                        "holding them (searched recursively)")
    p.add_argument("--out", type=Path, help="output folder (new or empty)")
    p.add_argument("--check", action="store_true",
                   help="write nothing; print per file what would be imported, baked or "
                        "refused")
    p.add_argument("--tolerance", type=int, default=DEFAULT_TOLERANCE, metavar="LEVELS",
                   help="how far (of 255) a pixel of the layers' composite may be from the "
                        f"file's flattened picture (default {DEFAULT_TOLERANCE})")
    return p


def unique_names(names: list[str]) -> list[str]:
    """Folder names made unique (`a`, `a-2`, ...)."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return out


def _checks(args) -> list:
    """The check of every source under `args.files`, after a warning for each folder
    given that holds none; a DataError saying so when there is nothing at all."""
    from dreamlayer_jax.data.import_sources import find_sources
    from dreamlayer_jax.data.importers import check_sources

    sources, empty = find_sources(args.files)
    if not sources:
        raise DataError(f"no layered file could be imported: {'; '.join(empty)}")
    for line in empty:
        print(f"warning: {line}", file=sys.stderr)
    return check_sources(sources, tolerance=args.tolerance)


def _check(args) -> int:
    checks = _checks(args)
    for check in checks:
        print(check.line())
    statuses = [check.status for check in checks]
    empty = sum(check.empty_layers for check in checks if check.scene is not None)
    print(f"{len(checks)} files: {statuses.count('import')} to import, "
          f"{statuses.count('refuse')} refused, {statuses.count('error')} unreadable; "
          f"{empty} empty layers would be skipped")
    return 0


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.tolerance < 0:
        raise InputError(f"--tolerance must be >= 0, got {args.tolerance}")
    if args.check:
        return _check(args)
    if args.out is None:
        raise InputError("--out is required (or --check to only report)")
    check_output_folder(args.out)
    from dreamlayer_jax.data.importers import report_of
    from dreamlayer_jax.data.scene_folder import write_scene_folder
    from dreamlayer_jax.io.atomic import staged_folder

    checks = _checks(args)
    report = report_of(checks)
    imported = [check for check in checks if check.scene is not None]
    if not imported:  # one error line, naming why each was skipped
        reasons = [item.reason for item in report.skipped]
        more = f"; and {len(reasons) - SHOWN} more" if len(reasons) > SHOWN else ""
        raise DataError(f"no layered file could be imported: {'; '.join(reasons[:SHOWN])}"
                        f"{more}")
    for item in report.skipped:
        print(f"warning: skipped {item.reason}", file=sys.stderr)
    out = args.out
    with staged_folder(out, "scenes") as tmp:
        names = unique_names([check.name for check in imported])
        for check, name in zip(imported, names, strict=True):
            write_scene_folder(check.scene, tmp / name)
    print(f"imported {len(imported)} scenes to {out}/ ({report.summary()})")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
