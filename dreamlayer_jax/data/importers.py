"""Importing layered Photoshop (.psd) and OpenRaster (.ora) files as `LayeredScene`s.

The bottom visible pixel layer is the background, the other visible pixel layers are
the foregrounds in paint order (layer opacity and, for PSD, an enabled pixel mask are
folded into the alpha). Each foreground's box is its alpha's bounding box normalised to
`[0, 1]`. Prompts are the layer names unless a sidecar JSON file (same stem, `.json`,
or `prompts_json`) gives them:

    {"prompt": "a cat on a sofa", "background": "a sofa", "layers": ["a cat"]}

The composite is the file's own flattened image (PSD: `psd.composite()`, ORA:
`mergedimage.png`, else the alpha-composite of the layers).
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from psd_tools import PSDImage

from dreamlayer_jax.data.compositing import alpha_bbox, alpha_composite
from dreamlayer_jax.data.image_io import decode_image, flatten_over_white, pil_to_rgba
from dreamlayer_jax.data.scene import LayeredScene
from dreamlayer_jax.data.skip_report import SkipReport
from dreamlayer_jax.errors import DataError

SUPPORTED_SUFFIXES = (".psd", ".ora")


def _paste(canvas: np.ndarray, patch: np.ndarray, left: int, top: int) -> np.ndarray:
    """Copy `patch` into `canvas` (in place) with its top-left corner at `(left, top)`,
    cutting what sticks out. Works for `[H, W]` and `[H, W, C]` arrays."""
    height, width = canvas.shape[:2]
    h, w = patch.shape[:2]
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(left + w, width), min(top + h, height)
    if x0 < x1 and y0 < y1:
        canvas[y0:y1, x0:x1] = patch[y0 - top : y1 - top, x0 - left : x1 - left]
    return canvas


def _on_canvas(
    rgba: np.ndarray, left: int, top: int, height: int, width: int, coverage: Any = 1.0
) -> np.ndarray:
    """A `[h, w, 4]` layer placed at `(left, top)` on a transparent `[height, width, 4]`
    canvas, its alpha multiplied by `coverage` (opacity, mask: a scalar or `[H, W]`)."""
    canvas = _paste(np.zeros((height, width, 4), dtype=np.uint8), rgba, left, top)
    if not (np.isscalar(coverage) and coverage == 1.0):
        canvas[..., 3] = np.rint(canvas[..., 3] * coverage).astype(np.uint8)
    canvas[canvas[..., 3] == 0] = 0
    return canvas


def _read_prompts(path: Path, prompts_json: str | os.PathLike | None) -> dict[str, Any] | None:
    """The sidecar prompts: `prompts_json` if given, else `<stem>.json` if it exists."""
    sidecar = Path(prompts_json) if prompts_json is not None else path.with_suffix(".json")
    if prompts_json is None and not sidecar.is_file():
        return None
    try:
        spec = json.loads(sidecar.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataError(f"{sidecar}: prompts file not found") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{sidecar}: not a readable JSON prompts file ({exc})") from exc
    if not isinstance(spec, dict):
        raise DataError(f"{sidecar}: must hold a JSON object")
    spec["_path"] = sidecar
    return spec


def _prompt_of(value: Any, where: Path, name: str) -> str:
    if isinstance(value, dict):
        value = value.get("prompt")
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{name}' must be a string (or {{'prompt': str}})")
    return value


def _assemble(
    path: Path,
    kind: str,
    named_layers: list[tuple[str, np.ndarray]],
    composite: np.ndarray | None,
    prompts_json: str | os.PathLike | None,
) -> LayeredScene:
    """Build the scene from the file's visible pixel layers, bottom first."""
    if not named_layers:
        raise DataError(f"{path}: no visible pixel layer")
    names = [name for name, _ in named_layers]
    background = flatten_over_white(named_layers[0][1])
    foregrounds = [rgba for _, rgba in named_layers[1:]]
    height, width = background.shape[:2]

    boxes = []
    for name, rgba in named_layers[1:]:
        box = alpha_bbox(rgba[..., 3])
        if box is None:
            raise DataError(f"{path}: layer '{name}' is fully transparent")
        x0, y0, x1, y1 = box
        boxes.append((x0 / width, y0 / height, x1 / width, y1 / height))

    background_prompt, layer_prompts, prompt = names[0], names[1:], None
    spec = _read_prompts(path, prompts_json)
    if spec is not None:
        where = spec["_path"]
        if "background" in spec:
            background_prompt = _prompt_of(spec["background"], where, "background")
        if "layers" in spec:
            listed = spec["layers"]
            if not isinstance(listed, list) or len(listed) != len(foregrounds):
                raise DataError(
                    f"{where}: field 'layers' must list {len(foregrounds)} prompts, one per "
                    f"foreground layer of {path.name}"
                )
            layer_prompts = [_prompt_of(v, where, f"layers[{i}]") for i, v in enumerate(listed)]
        if "prompt" in spec:
            prompt = _prompt_of(spec["prompt"], where, "prompt")

    if prompt is None:  # "<layer 1> and <layer 2> in front of <background>"
        prompt = " in front of ".join(
            filter(None, [" and ".join(layer_prompts), background_prompt])
        )
    if composite is None:
        composite = alpha_composite(background, foregrounds)
    elif composite.shape[:2] != (height, width):
        raise DataError(f"{path}: flattened image size differs from the canvas")
    try:
        return LayeredScene(
            prompt=prompt,
            background_prompt=background_prompt,
            background=background,
            layer_prompts=layer_prompts,
            layers=foregrounds,
            boxes=boxes,
            composite=composite,
            meta={"source": str(path), "format": kind, "layer_names": names},
        )
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from exc


def _psd_layer(layer: Any, height: int, width: int) -> np.ndarray | None:
    """A PSD layer on the canvas as uint8 RGBA, with its opacity and pixel mask applied."""
    image = layer.topil()
    if image is None:
        return None
    coverage = np.float32(layer.opacity / 255.0)
    if layer.has_mask() and not layer.mask.disabled:
        mask = layer.mask
        full = np.full((height, width), mask.background_color, dtype=np.float32)
        mask_image = mask.topil()
        if mask_image is not None:
            grey = np.asarray(mask_image.convert("L"), dtype=np.float32)
            _paste(full, grey, mask.left, mask.top)
        coverage = coverage * full / 255.0
    return _on_canvas(pil_to_rgba(image), layer.left, layer.top, height, width, coverage)


def import_psd(
    path: str | os.PathLike, prompts_json: str | os.PathLike | None = None
) -> LayeredScene:
    """Read a layered Photoshop file as a `LayeredScene` (see the module docstring).

    Raises DataError naming the file when it cannot be read or has no usable layers.
    """
    path = Path(path)
    try:
        psd = PSDImage.open(path)
        height, width = psd.height, psd.width
        named_layers = []
        for layer in psd.descendants():
            if layer.is_group() or not layer.is_visible() or not layer.has_pixels():
                continue
            rgba = _psd_layer(layer, height, width)
            if rgba is not None:
                named_layers.append((layer.name, rgba))
        composite = flatten_over_white(pil_to_rgba(psd.composite()))
    except FileNotFoundError as exc:
        raise DataError(f"{path}: file not found") from exc
    except Exception as exc:  # psd-tools raises many kinds of errors on damaged files
        raise DataError(f"{path}: cannot read PSD ({type(exc).__name__}: {exc})") from exc
    return _assemble(path, "psd", named_layers, composite, prompts_json)


def _ora_layers(
    element: ET.Element, opacity: float, found: list[tuple[str, str, int, int, float]]
) -> None:
    """Collect visible `(name, src, x, y, opacity)` under a stack element, top first."""
    for child in element:
        if child.get("visibility", "visible") == "hidden":
            continue
        child_opacity = opacity * float(child.get("opacity", "1"))
        if child.tag == "stack":
            _ora_layers(child, child_opacity, found)
        elif child.tag == "layer" and child.get("src"):
            x, y = int(float(child.get("x", "0"))), int(float(child.get("y", "0")))
            found.append((child.get("name", ""), child.get("src"), x, y, child_opacity))


def import_ora(
    path: str | os.PathLike, prompts_json: str | os.PathLike | None = None
) -> LayeredScene:
    """Read an OpenRaster file as a `LayeredScene` (see the module docstring).

    Raises DataError naming the file when it cannot be read or has no usable layers.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            root = ET.fromstring(archive.read("stack.xml"))
            if root.tag != "image":
                raise DataError(f"{path}: stack.xml's root is <{root.tag}>, not <image>")
            width, height = int(root.get("w", "0")), int(root.get("h", "0"))
            if width <= 0 or height <= 0:
                raise DataError(f"{path}: stack.xml gives no canvas size")
            found: list[tuple[str, str, int, int, float]] = []
            _ora_layers(root, 1.0, found)
            named_layers = []
            for name, src, x, y, opacity in reversed(found):
                pixels = decode_image(archive.read(src), f"{path}:{src}", channels=4)
                named_layers.append(
                    (name, _on_canvas(pixels, x, y, height, width, np.float32(opacity)))
                )
            composite = None
            if "mergedimage.png" in archive.namelist():
                merged = archive.read("mergedimage.png")
                composite = decode_image(merged, f"{path}:mergedimage.png", channels=3)
    except DataError:
        raise
    except FileNotFoundError as exc:
        raise DataError(f"{path}: file not found") from exc
    except (OSError, zipfile.BadZipFile, KeyError, ValueError, ET.ParseError) as exc:
        raise DataError(f"{path}: cannot read OpenRaster file ({exc})") from exc
    return _assemble(path, "ora", named_layers, composite, prompts_json)


def import_layered_file(
    path: str | os.PathLike, prompts_json: str | os.PathLike | None = None
) -> LayeredScene:
    """`import_psd` or `import_ora`, by the file's suffix."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".psd":
        return import_psd(path, prompts_json)
    if suffix == ".ora":
        return import_ora(path, prompts_json)
    raise DataError(f"{path}: not a layered file (expected one of {SUPPORTED_SUFFIXES})")


def import_layered_files(
    paths: Iterable[str | os.PathLike],
) -> tuple[list[LayeredScene], SkipReport]:
    """Import every .psd / .ora file given (a folder stands for the layered files in
    it), skipping unreadable ones. Returns `(scenes, report)`; the report counts what
    was loaded and names each skipped file with its reason."""
    files: list[Path] = []
    for entry in map(Path, paths):
        if entry.is_dir():
            files += sorted(
                p
                for p in entry.iterdir()
                if p.suffix.lower() in SUPPORTED_SUFFIXES and not p.name.startswith(".")
            )
        else:
            files.append(entry)
    scenes, report = [], SkipReport()
    for file in files:
        try:
            scenes.append(import_layered_file(file))
        except DataError as exc:
            report.add(file, str(exc))
            continue
        report.loaded += 1
    return scenes, report
