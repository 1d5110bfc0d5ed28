"""What to import under the paths a user gives: layered files and scene folders.

A file given is imported as it is. A folder given is searched recursively (sorted,
hidden files and folders such as unfinished writes left out, symbolic links to folders
not followed) for:

- layered files (.psd, .psb, .ora), each one scene;
- folders holding a `scene.json`, each one scene, not searched further. A result
  folder (`LayeredResult.save`: scene.json beside layers.ora and layers.psd) imports
  once, from its `layers.ora` (lossless), else its `layers.psd`; other layered files in
  it import on their own. A scene folder without those files (`data/scene_folder.py`)
  is read from its PNGs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from dreamlayer_jax.data.scene_folder import SCENE_JSON

PSD_SUFFIXES = (".psd", ".psb")
ORA_SUFFIXES = (".ora",)
SUPPORTED_SUFFIXES = PSD_SUFFIXES + ORA_SUFFIXES
RESULT_FILES = ("layers.ora", "layers.psd")  # a result folder's, in order of preference


@dataclass(frozen=True)
class Source:
    """One scene to import: `path` is what names it (a file, or a scene folder);
    `file` the layered file to read (None: a scene folder read from its PNGs)."""

    path: Path
    file: Path | None


def _layered(name: str) -> bool:
    return name.lower().endswith(SUPPORTED_SUFFIXES) and not name.startswith(".")


def _folder_sources(root: Path) -> list[Source]:
    """Every source under the folder `root` (module docstring)."""
    found: list[Source] = []
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files = sorted(f for f in files if not f.startswith("."))
        if SCENE_JSON in files:
            dirs[:] = []  # a scene folder is one scene
            read = next((here / name for name in RESULT_FILES if name in files), None)
            found.append(Source(here, read))
            files = [f for f in files if f not in RESULT_FILES]
        found += [Source(here / f, here / f) for f in files if _layered(f)]
    return found


def find_sources(paths: Iterable[str | os.PathLike]) -> tuple[list[Source], list[str]]:
    """The sources under `paths` (module docstring), in the order given, and one line
    for each folder given that holds none (`"<folder>: no .psd/.psb/.ora files or
    scene folders found (searched recursively)"`)."""
    sources: list[Source] = []
    empty: list[str] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = _folder_sources(path)
            if not found:
                empty.append(f"{path}: no .psd/.psb/.ora files or scene folders found "
                             "(searched recursively)")
            sources += found
        else:
            sources.append(Source(path, path))
    return sources, empty
