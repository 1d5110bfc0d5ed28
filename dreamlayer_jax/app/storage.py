"""The app's working folder: every upload and result lives here, under ids it made.

Nothing a client sends is ever used as a path. Results are `results/<id>/` (the files
`LayeredResult.save` writes), uploaded pictures `uploads/<id>.png` (re-encoded from the
decoded pixels, never the client's bytes). Ids are random hex strings made here; a
request names a result by id and a file by one of the names `LayeredResult.save`
writes, both checked against a fixed pattern before any path is built.
"""

from __future__ import annotations

import io
import json
import re
import secrets
import shutil
import warnings
import zipfile
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from dreamlayer_jax.errors import InputError

ID_PATTERN = re.compile(r"[0-9a-f]{32}")
RESULT_FILE = re.compile(r"(background|composite|preview)\.png|layer_\d{2}\.png|"
                         r"layers\.(psd|ora)|scene\.json|latents\.safetensors")
MAX_PIXELS = 40_000_000  # an upload's decoded size (a small file can decode huge)


def new_id() -> str:
    return secrets.token_hex(16)


class NotFound(InputError):
    """A result, upload or job id that the app does not know."""


class TooLarge(InputError):
    """An upload over the app's size limit."""


class Workdir:
    """The folder the app owns; `root` is made if missing."""

    def __init__(self, root: str | Path, max_upload_bytes: int) -> None:
        self.root = Path(root).resolve()
        self.max_upload_bytes = max_upload_bytes
        for sub in ("results", "uploads", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    # -- ids to paths ---------------------------------------------------------------
    def _checked(self, folder: str, ident: str, what: str) -> Path:
        if not isinstance(ident, str) or not ID_PATTERN.fullmatch(ident):
            raise NotFound(f"no {what} {ident!r}")
        return self.root / folder / ident

    def result_dir(self, rid: str) -> Path:
        path = self._checked("results", rid, "result")
        if not (path / "scene.json").is_file():
            raise NotFound(f"no result {rid!r}")
        return path

    def result_file(self, rid: str, name: str) -> Path:
        if not isinstance(name, str) or not RESULT_FILE.fullmatch(name):
            raise NotFound(f"no file {name!r} in a result")
        path = self.result_dir(rid) / name
        if not path.is_file():
            raise NotFound(f"result {rid} has no {name}")
        return path

    def new_result_dir(self) -> tuple[str, Path]:
        rid = new_id()
        return rid, self.root / "results" / rid

    def upload_path(self, uid: str) -> Path:
        path = self._checked("uploads", uid, "upload").with_suffix(".png")
        if not path.is_file():
            raise NotFound(f"no upload {uid!r}")
        return path

    def scratch(self) -> Path:
        """A fresh empty folder under tmp/ (the caller removes it)."""
        path = self.root / "tmp" / new_id()
        path.mkdir()
        return path

    # -- uploads --------------------------------------------------------------------
    def check_size(self, data: bytes, what: str) -> None:
        if len(data) > self.max_upload_bytes:
            raise TooLarge(f"{what} is {len(data) / 1e6:.1f} MB, more than the "
                             f"{self.max_upload_bytes / 1e6:g} MB this app accepts")
        if not data:
            raise InputError(f"{what} is empty")

    def save_picture(self, data: bytes, what: str = "the upload") -> tuple[str, tuple[int, int]]:
        """Decode an uploaded picture and store it as PNG; `(id, (width, height))`."""
        self.check_size(data, what)
        image = read_picture(data, what)
        uid = new_id()
        image.save(self.root / "uploads" / f"{uid}.png")
        return uid, image.size

    def list_results(self) -> list[dict[str, Any]]:
        """Every result's id and scene.json, newest first."""
        out = []
        folders = [p for p in (self.root / "results").iterdir() if ID_PATTERN.fullmatch(p.name)]
        for path in sorted(folders, key=lambda p: p.stat().st_mtime, reverse=True):
            try:
                record = json.loads((path / "scene.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            out.append({"id": path.name, "scene": record})
        return out

    def remove(self, path: Path) -> None:
        if path.resolve().is_relative_to(self.root):
            shutil.rmtree(path, ignore_errors=True)


def read_picture(data: bytes, what: str) -> Image.Image:
    """The decoded picture (RGBA), or InputError naming why it is not one."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as opened:
                if opened.width * opened.height > MAX_PIXELS:
                    raise InputError(f"{what} is {opened.width}x{opened.height} pixels, "
                                     f"more than {MAX_PIXELS:,} this app decodes")
                opened.load()
                image = opened.convert("RGBA")
    except InputError:
        raise
    except UnidentifiedImageError as exc:
        raise InputError(f"{what} is not a picture (PNG, JPEG, WebP, ...)") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(f"{what} is too large a picture to decode ({exc})") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise InputError(f"{what} is not a readable picture ({exc})") from exc
    return image


def read_saved_files(files: list[tuple[str, bytes]], limit: int) -> dict[str, bytes]:
    """Files of a saved result, from a folder's files or a .zip, by base name: only the
    names `LayeredResult.save` writes are kept, everything else is ignored."""
    found: dict[str, bytes] = {}
    for name, data in files:
        base = name.replace("\\", "/").rsplit("/", 1)[-1]
        if base.lower().endswith(".zip"):
            found.update(_zip_members(data, limit))
        elif RESULT_FILE.fullmatch(base):
            found[base] = data
    return found


def _zip_members(data: bytes, limit: int) -> dict[str, bytes]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise InputError(f"the upload is not a readable .zip ({exc})") from exc
    found = {}
    with archive:
        for info in archive.infolist():
            base = info.filename.rsplit("/", 1)[-1]
            if info.is_dir() or not RESULT_FILE.fullmatch(base):
                continue
            if info.file_size > limit:
                raise InputError(f"{base} in the .zip is larger than this app accepts")
            found[base] = archive.read(info)
    return found
