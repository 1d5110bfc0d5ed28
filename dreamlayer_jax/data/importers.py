"""Importing layered files (Photoshop .psd / .psb, OpenRaster .ora) as `LayeredScene`s.

The rule: a file is imported only if its imported layers, composited the way the scene
format defines (straight-alpha "over", bottom first, over a white backdrop), reproduce
the file's own flattened picture within `tolerance`. What plain RGBA layers cannot hold
is either baked into the layer where that is exact (masks, opacity, clipped layers,
drawable effects, group opacity...; `data/psd_import.py`, `data/ora_import.py` list
them) or the file is refused in one line naming the layer and the feature; nothing is
dropped silently. `check_layered_file` says what would be imported, baked or refused.

The bottom visible non-empty layer is the background (over white), the others the
foregrounds in paint order; fully transparent layers are skipped (and counted), hidden
ones ignored. Prompts and boxes come from the layer names and the layers' pixels, the
scene a file written by this project carries (exact: every prompt, box and the global
prompt), and a sidecar JSON file (`<stem>.json`, or a result folder's `scene.json`);
`data/layer_prompts.py` says which wins. The scene's composite is the file's flattened
picture (PSD: the stored merged image, or psd-tools' rendering when the file has none;
ORA: `mergedimage.png`, or the layers' composite when it is missing), flattened over
white. `meta["source"]` is the file's path as given (relative if it was), and
`meta["source_path"]` its absolute form.

Many paths at once (`check_sources`, `import_layered_files`): folders are searched
recursively, and a result folder is one scene (`data/import_sources.py`).
"""

from __future__ import annotations

import logging
import os
import warnings
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from dreamlayer_jax.data.compositing import alpha_composite
from dreamlayer_jax.data.image_io import flatten_over_white
from dreamlayer_jax.data.import_sources import (
    ORA_SUFFIXES,
    PSD_SUFFIXES,
    SUPPORTED_SUFFIXES,
    Source,
    find_sources,
)
from dreamlayer_jax.data.layer_prompts import layer_prompts
from dreamlayer_jax.data.layer_stack import LayerStack, RefusedError, refuse
from dreamlayer_jax.data.scene import LayeredScene
from dreamlayer_jax.data.scene_folder import read_scene_folder
from dreamlayer_jax.data.skip_report import SkipReport
from dreamlayer_jax.errors import DataError

# A pixel "differs" when a channel of the layers' composite and of the file's flattened
# picture are more than TOLERANCE levels (of 255) apart. A file is refused when more
# than OUTLIER_FRACTION of its pixels differ, or any pixel by more than OUTLIER_LIMIT.
# 8-bit rounding in the painting programs stays within a few levels; the few outliers
# allowed are anti-aliased edges drawn or composited slightly differently (vector
# shapes psd-tools renders, documents composited in CMYK, Lab or linear light).
TOLERANCE = 6
OUTLIER_FRACTION = 0.001
OUTLIER_LIMIT = 64


# -- the check: do the layers add up to the flattened picture? -------------------------
def _verify(path: Path, stack: LayerStack, layers: list, recomposed: np.ndarray,
            reference: np.ndarray, tolerance: int, notes: list[str]) -> int:
    """The largest difference; raises RefusedError when too many pixels differ."""
    difference = np.abs(recomposed.astype(np.int16) - reference.astype(np.int16)).max(axis=-1)
    largest = int(difference.max(initial=0))
    outliers = int(np.count_nonzero(difference > tolerance))
    limit = max(tolerance, OUTLIER_LIMIT)
    if outliers <= OUTLIER_FRACTION * difference.size and largest <= limit:
        return largest
    y, x = np.unravel_index(int(np.argmax(difference)), difference.shape)
    under = "outside every layer"
    for layer in reversed(stack.layers):  # topmost first, empty ones included
        x0, y0, x1, y1 = layer.area or (0, 0, stack.width, stack.height)
        if layer.rgba[y, x, 3] > 0 or (x0 <= x < x1 and y0 <= y < y1 and layer.area):
            under = f"under {layer.where}"
            break
    prefix = under.removeprefix("under ") + ": "
    features = [note[len(prefix):] for note in notes if note.startswith(prefix)]
    extra = f" ({'; '.join(features)})" if features else ""
    raise refuse(path, f"the layers do not reproduce {stack.reference_note}: "
                       f"{outliers} pixels differ by more than {tolerance} levels (largest "
                       f"{largest} at x={x}, y={y}, {under}{extra})")


def _assemble(path: Path, stack: LayerStack, prompts_json: str | os.PathLike | None,
              tolerance: int) -> LayeredScene:
    """The scene from a file's baked layers, checked against its flattened picture."""
    layers = []
    for layer in stack.layers:
        if layer.empty:
            stack.empty_layers += 1
            stack.skipped.append(f"empty {layer.where}")
        else:
            layers.append(layer)
    if not layers:
        raise refuse(path, "no visible layer with pixels")
    background = flatten_over_white(layers[0].rgba)
    foregrounds = [layer.rgba for layer in layers[1:]]
    height, width = background.shape[:2]
    recomposed = alpha_composite(background, foregrounds)
    largest = 0
    if stack.reference is not None:
        if stack.reference.shape[:2] != (height, width):
            raise DataError(f"{path}: flattened picture size differs from the canvas")
        composite = flatten_over_white(stack.reference)
        largest = _verify(path, stack, layers, recomposed, composite, tolerance, stack.baked)
    else:
        composite = recomposed

    prompts = layer_prompts(path, layers, stack.record, prompts_json, stack.warnings)
    meta = {
        **portable_source(path),
        "format": stack.kind,
        "layer_names": [layer.name for layer in layers],
        "import": {
            "prompts": prompts.sources,
            "baked": list(stack.baked),
            "skipped": list(stack.skipped),
            "flattened": stack.reference_note,
            "max_difference": largest,
        },
    }
    try:
        return LayeredScene(
            prompt=prompts.prompt,
            background_prompt=prompts.background,
            background=background,
            layer_prompts=prompts.layers,
            layers=foregrounds,
            boxes=prompts.boxes,
            composite=composite,
            meta=meta,
        )
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from exc


# -- reading ----------------------------------------------------------------------------
class _Collect(logging.Handler):
    def __init__(self, into: list[str]):
        super().__init__(logging.WARNING)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(" ".join(record.getMessage().split()))


@contextmanager
def _parser_messages(into: list[str]) -> Iterator[None]:
    """Collect psd-tools' log lines and Python warnings into `into` instead of stderr."""
    logger = logging.getLogger("psd_tools")
    handler, propagate = _Collect(into), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
        into.extend(" ".join(str(w.message).split()) for w in caught)
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _read_stack(path: Path, messages: list[str]) -> LayerStack:
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise DataError(f"{path}: not a layered file (expected one of {SUPPORTED_SUFFIXES})")
    with _parser_messages(messages):
        if suffix in PSD_SUFFIXES:
            from dreamlayer_jax.data.psd_import import read_psd_stack

            try:
                return read_psd_stack(path)
            except DataError:
                raise
            except FileNotFoundError as exc:
                raise DataError(f"{path}: file not found") from exc
            except MemoryError as exc:
                raise DataError(f"{path}: too large to read") from exc
            except Exception as exc:  # psd-tools raises many kinds of errors on damaged files
                raise DataError(f"{path}: cannot read PSD ({type(exc).__name__}: {exc})") from exc
        from dreamlayer_jax.data.ora_import import read_ora_stack

        try:
            return read_ora_stack(path)
        except DataError:
            raise
        except FileNotFoundError as exc:
            raise DataError(f"{path}: file not found") from exc
        except (OSError, zipfile.BadZipFile, KeyError, ValueError, ET.ParseError) as exc:
            raise DataError(f"{path}: cannot read OpenRaster file ({exc})") from exc


@dataclass
class FileCheck:
    """What importing one file gives: the scene, or why it is refused / unreadable,
    with what was baked and skipped on the way."""

    path: Path
    scene: LayeredScene | None = None
    reason: str = ""
    refused: bool = False  # readable, but not importable faithfully
    baked: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    empty_layers: int = 0

    @property
    def name(self) -> str:
        """The scene's name: the file's stem, or a (result or scene) folder's name."""
        return (self.path.name if self.path.is_dir() else self.path.stem) or "scene"

    @property
    def status(self) -> str:
        return "import" if self.scene is not None else "refuse" if self.refused else "error"

    def line(self) -> str:
        """One line for `import_layers --check`."""
        if self.scene is None:
            text = self.reason
            prefix = f"{self.path}: "
            text = text[len(prefix):] if text.startswith(prefix) else text
            return f"{self.status:7s}{self.path}: {text}"
        scene = self.scene
        layers = [f"background {scene.background_prompt!r}"]
        layers += [repr(prompt) for prompt in scene.layer_prompts]
        text = f"import {self.path}: {1 + scene.num_foregrounds} layers ({', '.join(layers)})"
        for label, items in (("baked", self.baked), ("skipped", self.skipped),
                             ("warnings", self.warnings)):
            if items:
                text += f"; {label}: " + ", ".join(items)
        return text


def check_layered_file(
    path: str | os.PathLike, prompts_json: str | os.PathLike | None = None,
    tolerance: int = TOLERANCE,
) -> FileCheck:
    """Import one file, never raising for the file's sake: the `FileCheck` holds the
    scene or the one-line reason."""
    path = Path(path)
    check = FileCheck(path)
    stack = None
    try:
        stack = _read_stack(path, check.warnings)
        check.scene = _assemble(path, stack, prompts_json, tolerance)
    except RefusedError as exc:
        check.reason, check.refused = str(exc), True
    except DataError as exc:
        check.reason = str(exc)
    if stack is not None:
        check.baked, check.skipped = list(stack.baked), list(stack.skipped)
        check.warnings += stack.warnings
        check.empty_layers = stack.empty_layers
    return check


def import_layered_file(
    path: str | os.PathLike, prompts_json: str | os.PathLike | None = None,
    tolerance: int = TOLERANCE,
) -> LayeredScene:
    """Read a .psd / .psb / .ora file as a `LayeredScene` (see the module docstring).

    Raises DataError naming the file when it cannot be read, and its subclass
    RefusedError when it cannot be imported faithfully (naming the layer and feature).
    """
    path = Path(path)
    stack = _read_stack(path, [])
    return _assemble(path, stack, prompts_json, tolerance)


def import_psd(path: str | os.PathLike, prompts_json: str | os.PathLike | None = None,
               tolerance: int = TOLERANCE) -> LayeredScene:
    """`import_layered_file` for a Photoshop file (.psd or .psb)."""
    path = Path(path)
    if path.suffix.lower() not in PSD_SUFFIXES:
        raise DataError(f"{path}: not a Photoshop file (expected {PSD_SUFFIXES})")
    return import_layered_file(path, prompts_json, tolerance)


def import_ora(path: str | os.PathLike, prompts_json: str | os.PathLike | None = None,
               tolerance: int = TOLERANCE) -> LayeredScene:
    """`import_layered_file` for an OpenRaster file (.ora)."""
    path = Path(path)
    if path.suffix.lower() not in ORA_SUFFIXES:
        raise DataError(f"{path}: not an OpenRaster file (expected .ora)")
    return import_layered_file(path, prompts_json, tolerance)


def portable_source(path: Path) -> dict[str, str]:
    """`meta`'s record of where a scene was imported from: `"source"`, the path as given
    (relative if it was given relative), and `"source_path"`, its absolute form."""
    return {"source": str(path), "source_path": str(Path(os.path.abspath(path)))}


def check_source(source: Source, tolerance: int = TOLERANCE) -> FileCheck:
    """Import one source (`data/import_sources.py`) without raising for its sake: a
    layered file as `check_layered_file`, a scene folder through its PNGs."""
    if source.file is not None:
        check = check_layered_file(source.file, tolerance=tolerance)
        check.path = source.path
        return check
    check = FileCheck(source.path)
    try:
        scene = read_scene_folder(source.path)
        check.scene = replace(
            scene, meta={**scene.meta, **portable_source(source.path), "format": "scene folder"})
    except DataError as exc:
        check.reason = str(exc)
    return check


def check_sources(sources: Iterable[Source], tolerance: int = TOLERANCE) -> list[FileCheck]:
    """`check_source` for each source."""
    return [check_source(source, tolerance) for source in sources]


def check_layered_files(paths: Iterable[str | os.PathLike], tolerance: int = TOLERANCE
                        ) -> list[FileCheck]:
    """`check_source` for every source under `paths` (`find_sources`: folders searched
    recursively, a result folder one scene)."""
    return check_sources(find_sources(paths)[0], tolerance)


def report_of(checks: list[FileCheck]) -> SkipReport:
    """The `SkipReport` of a list of checks: loaded, skipped with reasons, empty layers."""
    report = SkipReport()
    for check in checks:
        if check.scene is None:
            report.add(check.path, check.reason)
        else:
            report.loaded += 1
            report.count("empty layers skipped", check.empty_layers)
    return report


def import_layered_files(
    paths: Iterable[str | os.PathLike], tolerance: int = TOLERANCE,
) -> tuple[list[LayeredScene], SkipReport]:
    """Import every .psd / .psb / .ora file and scene folder under `paths` (folders
    searched recursively, a result folder one scene: `find_sources`), skipping
    unreadable and refused ones. Returns `(scenes, report)`; the report counts what was
    loaded and the empty layers skipped, and names each skipped file with its reason."""
    checks = check_layered_files(paths, tolerance)
    return [c.scene for c in checks if c.scene is not None], report_of(checks)
