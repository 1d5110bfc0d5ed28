"""`dreamlayer-build-dataset SRC... --out DIR`: the TFDS dataset `train.py` reads.

    python -m dreamlayer_jax.cli.build_dataset scenes/ art/*.psd --out data/mine
    python -m dreamlayer_jax.cli.build_dataset --synthetic 1000 --resolution 64 --out data/syn
    python train.py --config configs/sd15.py --workdir runs/sd15 \\
        --set model=SD15_FOLDER data_dir=data/mine

SRC: scene folders (a folder with scene.json: `sample.py` results too, one scene
each), layered files (.psd, .psb, .ora) and folders of them (searched recursively, as
`import_layers` does), and `--synthetic N` generated scenes, mixed freely. Every scene
is first written as a scene folder under DIR/scenes/ (kept: it is the dataset's source,
and what a rebuild reads), then packed
into DIR/dreamlayer_scenes/<config>/1.0.0/. `data_dir` accepts DIR or that folder.
Unreadable or refused inputs are skipped with one warning line each; the libraries'
messages go to DIR/build.log.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
from pathlib import Path
from typing import Any

from dreamlayer_jax.cli.common import ArgumentParser, library_output_to_log, run_cli
from dreamlayer_jax.errors import DataError, InputError, OutputError


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="dreamlayer-build-dataset", description=__doc__.split("\n")[0],
                       epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("sources", nargs="*", type=Path, metavar="SRC",
                   help="scene folders, folders of them, .psd/.psb/.ora files or folders")
    p.add_argument("--out", type=Path, required=True, help="the dataset folder (new or empty)")
    p.add_argument("--eval", nargs="+", type=Path, default=[], metavar="SRC",
                   help="sources of an eval split")
    p.add_argument("--synthetic", type=int, default=0, metavar="N",
                   help="add N synthetic scenes to the train split")
    p.add_argument("--synthetic-eval", type=int, default=0, metavar="N",
                   help="synthetic scenes of the eval split")
    p.add_argument("--resolution", type=int, default=None, metavar="PX",
                   help="side of the synthetic scenes (default: 64); with scene sources, "
                        "scenes of another size are skipped (default: keep every size)")
    p.add_argument("--max-foregrounds", type=int, default=3,
                   help="most foregrounds per synthetic scene")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic scenes")
    p.add_argument("--overwrite", action="store_true", help="replace a dataset in --out")
    return p


def stage_sources(sources: list[Path], synthetic: int, folder: Path, args: Any,
                  stream: int) -> list[str]:
    """Write every scene of `sources` (and `synthetic` generated ones) as a scene folder
    under `folder`; returns the warning lines of what was skipped. Folders are searched
    recursively and a result folder is one scene, as `import_layers` does
    (`data/import_sources.find_sources`)."""
    from dreamlayer_jax.data.import_sources import SUPPORTED_SUFFIXES, find_sources
    from dreamlayer_jax.data.importers import check_layered_files, report_of
    from dreamlayer_jax.data.scene_folder import write_scene_folder

    folder.mkdir(parents=True, exist_ok=True)
    for src in sources:
        if not src.exists():
            raise InputError(f"source {str(src)!r} does not exist")
        if src.is_file() and src.suffix.lower() not in SUPPORTED_SUFFIXES:
            raise InputError(f"source {str(src)!r} is neither a scene folder nor a "
                             f"layered file ({', '.join(SUPPORTED_SUFFIXES)})")
    empty = find_sources(sources)[1]
    if empty:
        raise InputError(f"source {empty[0]}")
    checks = check_layered_files(sources) if sources else []
    warnings = [f"skipped {item.reason}" for item in report_of(checks).skipped]
    count = 0
    for check in checks:
        if check.scene is not None:
            count += 1
            write_scene_folder(check.scene, folder / f"{count:06d}-{check.name}")
    if synthetic:
        from dreamlayer_jax.data.synthetic import SyntheticSceneGenerator

        gen = SyntheticSceneGenerator(args.resolution or 64, args.max_foregrounds)
        for i in range(synthetic):
            count += 1
            write_scene_folder(gen.sample((args.seed, stream, i)),
                               folder / f"{count:06d}-synthetic")
    return warnings


def _build(args: Any) -> Path:
    from dreamlayer_jax.data.tfds_builder import build_dataset

    if not args.sources and not args.eval:  # generated scenes only: no staging
        return build_dataset("synthetic", args.out, num_train=args.synthetic,
                             num_eval=args.synthetic_eval, seed=args.seed,
                             resolution=args.resolution or 64,
                             max_foregrounds=args.max_foregrounds)
    scenes = args.out / "scenes"
    for line in stage_sources(args.sources, args.synthetic, scenes / "train", args, 0):
        print(f"warning: {line}", file=sys.stderr)
    eval_root = None
    if args.eval or args.synthetic_eval:
        eval_root = scenes / "eval"
        for line in stage_sources(args.eval, args.synthetic_eval, eval_root, args, 1):
            print(f"warning: {line}", file=sys.stderr)
    if not any((scenes / "train").iterdir()):
        raise DataError("no scene could be read from the sources")
    return build_dataset("folder", args.out, root=scenes / "train",
                         eval_root=None if eval_root is None else str(eval_root),
                         resolution=args.resolution if args.sources else None)


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if not args.sources and not args.synthetic:
        raise InputError("nothing to build: give scene folders / layered files, or "
                         "--synthetic N")
    for flag in ("synthetic", "synthetic_eval", "max_foregrounds"):
        if getattr(args, flag) < 0:
            raise InputError(f"--{flag.replace('_', '-')} must be >= 0")
    if args.resolution is not None and args.resolution < 8:
        raise InputError(f"--resolution must be >= 8, got {args.resolution}")
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise OutputError(f"output path {str(out)!r} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not args.overwrite:
            raise OutputError(f"output folder {str(out)!r} is not empty: pass --overwrite "
                              "to rebuild it, or another --out")
        shutil.rmtree(out)
    for src in [*args.sources, *args.eval]:  # refused before anything is written
        if not src.exists():
            raise InputError(f"source {str(src)!r} does not exist")
    out.mkdir(parents=True, exist_ok=True)
    import logging

    logging.getLogger("absl").setLevel(logging.ERROR)
    with library_output_to_log(out, "build.log"), \
            contextlib.redirect_stdout(sys.stderr):  # tfds prints its progress
        try:
            path = _build(args)
        except BaseException:
            shutil.rmtree(out, ignore_errors=True)  # nothing half-built is left
            raise
    downloads = out / "downloads"  # tfds' empty download folder
    if downloads.is_dir() and not any(p.is_file() for p in downloads.rglob("*")):
        shutil.rmtree(downloads)
    from dreamlayer_jax.data.tfds_builder import dataset_metadata

    splits = dataset_metadata(path).get("splits", {})
    counts = ", ".join(f"{split} {info.get('loaded', 0)} scenes"
                       + (f" ({info['skipped']} skipped)" if info.get("skipped") else "")
                       for split, info in sorted(splits.items()))
    print(f"built {path} ({counts}); train on it with --set data_dir={out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
