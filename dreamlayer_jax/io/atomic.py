"""Writing files and folders atomically, with the modes a plain `open()` would give.

A result is written into a hidden temporary beside its destination and renamed into place
once complete, so nothing half-written is ever seen under the final name; `tempfile`'s
private modes (0600 files, 0700 folders) are replaced by what the umask allows.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from dreamlayer_jax.errors import OutputError


def current_umask() -> int:
    """The process's umask (read from /proc where possible: setting it to read it is
    not thread-safe)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(path: str | os.PathLike, recursive: bool = False) -> None:
    """Give `path` the mode a plain `open()` / `mkdir()` would have given it (`0o666`
    for a file, `0o777` for a folder, less the umask). `tempfile` creates files 0600
    and folders 0700; an atomic rename would otherwise keep those. With `recursive`,
    everything under a folder too."""
    mask = current_umask()
    path = Path(path)
    paths = [path] + (sorted(path.rglob("*")) if recursive and path.is_dir() else [])
    for item in paths:
        if item.is_symlink():
            continue
        os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~mask)


def write_atomically(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Write one file through `write(temp)` beside `path`, then rename it into place with
    the umask's mode; `path` is never seen half-written."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({exc})") from exc
    try:
        write(Path(temp))
        follow_umask(temp)
        os.replace(temp, path)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({exc})") from exc
    finally:
        if os.path.exists(temp):
            os.remove(temp)
    return path


@contextlib.contextmanager
def staged_folder(out: str | os.PathLike, what: str = "files") -> Iterator[Path]:
    """Write the folder `out` atomically: yields a fresh hidden folder beside it; when the
    block ends without error the folder takes `out`'s place (an existing empty `out` is
    replaced) with the umask's modes. On any error it is removed and `out` is untouched;
    an `OSError` becomes one `OutputError` naming `what`."""
    out = Path(out)
    parent = out.parent if str(out.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=parent))
    except OSError as exc:
        raise OutputError(f"cannot write to {str(parent)!r}: {exc.strerror}") from exc
    try:
        yield tmp
        follow_umask(tmp, recursive=True)
        if out.is_dir():
            out.rmdir()
        os.replace(tmp, out)
    except OSError as exc:
        raise OutputError(f"cannot write {what} to {str(out)!r}: {exc.strerror}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
