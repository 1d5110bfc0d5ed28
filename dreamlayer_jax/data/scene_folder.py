"""The on-disk scene format (DESIGN.md section 5): one folder per scene.

    scene/
      scene.json      {"prompt": str,
                       "background": {"prompt": str, "file": "background.png"},
                       "layers": [{"prompt": str, "box": [x0, y0, x1, y1], "file": "layer_00.png"}],
                       "composite": "composite.png",
                       ...any other keys: kept in LayeredScene.meta}
      background.png  RGB
      layer_00.png    RGBA, straight alpha, paint order
      composite.png   RGB

Reading accepts any PNG flavour (16-bit, palette, grayscale, RGB for a layer) by
converting it; every problem raises DataError naming the file or the field. Writing is
atomic: the folder appears complete or not at all.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from dreamlayer_jax.data.image_io import decode_image, encode_png
from dreamlayer_jax.data.scene import LayeredScene, validate_box
from dreamlayer_jax.data.skip_report import SkipReport
from dreamlayer_jax.errors import DataError, OutputError

SCENE_JSON = "scene.json"
RESERVED_KEYS = ("prompt", "background", "layers", "composite")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def scene_to_json(scene: LayeredScene) -> dict[str, Any]:
    """The `scene.json` content for `scene` (file names `background.png`, `layer_KK.png`)."""
    clash = [key for key in scene.meta if key in RESERVED_KEYS]
    if clash:
        raise OutputError(f"scene meta keys {clash} clash with scene.json's own fields")
    spec: dict[str, Any] = {
        "prompt": scene.prompt,
        "background": {"prompt": scene.background_prompt, "file": "background.png"},
        "layers": [
            {"prompt": prompt, "box": [float(v) for v in box], "file": f"layer_{index:02d}.png"}
            for index, (prompt, box) in enumerate(zip(scene.layer_prompts, scene.boxes))
        ],
        "composite": "composite.png",
    }
    spec.update(scene.meta)
    return spec


def write_scene_folder(
    scene: LayeredScene, folder: str | os.PathLike, overwrite: bool = False
) -> Path:
    """Write `scene` as a scene folder at `folder`, atomically.

    Everything is written into a hidden temporary folder next to `folder`, which is then
    renamed. Raises OutputError when `folder` exists (unless `overwrite`) or cannot be
    written. Returns the folder's Path.
    """
    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise OutputError(f"{folder}: already exists (pass overwrite=True to replace it)")
    spec = scene_to_json(scene)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    temp = folder.parent / f".{folder.name}.tmp-{tag}"
    old = folder.parent / f".{folder.name}.old-{tag}"
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        temp.mkdir()
        (temp / "background.png").write_bytes(encode_png(scene.background))
        for index, layer in enumerate(scene.layers):
            (temp / f"layer_{index:02d}.png").write_bytes(encode_png(layer))
        (temp / "composite.png").write_bytes(encode_png(scene.composite))
        text = json.dumps(spec, indent=2, ensure_ascii=False, default=_json_default)
        (temp / SCENE_JSON).write_text(text + "\n", encoding="utf-8")
        if folder.exists():
            folder.rename(old)
        temp.rename(folder)
    except (OSError, TypeError, ValueError) as exc:
        shutil.rmtree(temp, ignore_errors=True)
        if old.exists() and not folder.exists():
            old.rename(folder)
        raise OutputError(f"{folder}: cannot write scene folder ({exc})") from exc
    shutil.rmtree(old, ignore_errors=True)
    return folder


def _field(spec: dict, key: str, kind: type, where: Path, name: str) -> Any:
    if key not in spec:
        raise DataError(f"{where}: missing field '{name}'")
    value = spec[key]
    if not isinstance(value, kind):
        raise DataError(f"{where}: field '{name}' must be a {kind.__name__}, got {value!r}")
    return value


def _file(folder: Path, name: str, where: Path, field: str) -> Path:
    path = (folder / name).resolve()
    if Path(name).is_absolute() or not path.is_relative_to(folder.resolve()):
        raise DataError(f"{where}: field '{field}' must name a file inside the scene folder")
    return path


def read_scene_folder(folder: str | os.PathLike) -> LayeredScene:
    """Read one scene folder. Raises DataError naming the file or field at fault."""
    folder = Path(folder)
    where = folder / SCENE_JSON
    try:
        text = where.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise DataError(f"{where}: missing (not a scene folder)") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{where}: cannot read ({exc})") from exc
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: not valid JSON ({exc})") from exc
    if not isinstance(spec, dict):
        raise DataError(f"{where}: must hold a JSON object, got {type(spec).__name__}")

    prompt = _field(spec, "prompt", str, where, "prompt")
    background_spec = _field(spec, "background", dict, where, "background")
    background_prompt = _field(background_spec, "prompt", str, where, "background.prompt")
    background_file = _field(background_spec, "file", str, where, "background.file")
    layer_specs = _field(spec, "layers", list, where, "layers")
    composite_file = _field(spec, "composite", str, where, "composite")

    background_path = _file(folder, background_file, where, "background.file")
    background = decode_image(background_path, str(background_path), channels=3)
    size = background.shape[:2]

    def same_size(image: np.ndarray, path: Path) -> np.ndarray:
        if image.shape[:2] != size:
            raise DataError(
                f"{path}: size {image.shape[1]}x{image.shape[0]} differs from the "
                f"background's {size[1]}x{size[0]}"
            )
        return image

    layer_prompts, layers, boxes = [], [], []
    for index, entry in enumerate(layer_specs):
        name = f"layers[{index}]"
        if not isinstance(entry, dict):
            raise DataError(f"{where}: field '{name}' must be an object, got {entry!r}")
        layer_prompts.append(_field(entry, "prompt", str, where, f"{name}.prompt"))
        box = _field(entry, "box", list, where, f"{name}.box")
        boxes.append(validate_box(box, f"{where}: field '{name}.box'", DataError))
        file_name = _field(entry, "file", str, where, f"{name}.file")
        path = _file(folder, file_name, where, f"{name}.file")
        layers.append(same_size(decode_image(path, str(path), channels=4), path))

    composite_path = _file(folder, composite_file, where, "composite")
    composite = same_size(decode_image(composite_path, str(composite_path), 3), composite_path)
    meta = {key: value for key, value in spec.items() if key not in RESERVED_KEYS}
    try:
        return LayeredScene(
            prompt=prompt,
            background_prompt=background_prompt,
            background=background,
            layer_prompts=layer_prompts,
            layers=layers,
            boxes=boxes,
            composite=composite,
            meta=meta,
        )
    except DataError as exc:
        raise DataError(f"{where}: {exc}") from exc


def scene_folder_paths(root: str | os.PathLike) -> list[Path]:
    """The scene folders under `root`: `root` itself if it holds a scene.json, else its
    sub-folders (sorted, hidden ones such as unfinished writes left out)."""
    root = Path(root)
    if (root / SCENE_JSON).is_file():
        return [root]
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def iter_scene_folders(
    root: str | os.PathLike,
) -> tuple[Iterator[LayeredScene], SkipReport]:
    """Lazily read every scene folder under `root`, skipping unreadable ones.

    Returns `(scenes, report)`: `scenes` is an iterator; `report` counts the scenes
    loaded and lists every skipped folder with its reason, and is complete once the
    iterator is exhausted.
    """
    paths = scene_folder_paths(root)
    report = SkipReport()

    def scenes() -> Iterator[LayeredScene]:
        for path in paths:
            try:
                scene = read_scene_folder(path)
            except DataError as exc:
                report.add(path, str(exc))
                continue
            report.loaded += 1
            yield scene

    return scenes(), report


def read_scene_folders(root: str | os.PathLike) -> tuple[list[LayeredScene], SkipReport]:
    """Like `iter_scene_folders`, but reads everything now: `(list of scenes, report)`."""
    scenes, report = iter_scene_folders(root)
    return list(scenes), report
