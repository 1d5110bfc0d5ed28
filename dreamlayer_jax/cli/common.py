"""What the command-line tools share: one-line errors with exit code 2."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

from dreamlayer_jax.errors import DreamLayerError, InputError, OutputError


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise InputError(message)


def _warn_one_line(message, category, filename, lineno, file=None, line=None) -> None:
    text = " ".join(str(message).split())
    print(f"warning: {text}", file=sys.stderr if file is None else file)


def run_cli(body: Callable[[list[str] | None], int], argv: list[str] | None) -> int:
    """Run `body`; a `DreamLayerError` becomes one line on stderr and its exit code.

    Python warnings (a truncated prompt, a resized image) are one `warning: ...` line each;
    transformers' own log chatter is silenced (the pipeline warns about what matters).
    """
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _warn_one_line
            return body(argv)
    except DreamLayerError as exc:
        print(exc.one_line(), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


def parse_box(text: str, what: str) -> tuple[float, float, float, float]:
    """`"x0,y0,x1,y1"` -> four floats (range checks happen in `Scene`)."""
    parts = text.split(",")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise InputError(f"{what}: box {text!r} must be four numbers x0,y0,x1,y1") from None
    if len(values) != 4:
        raise InputError(f"{what}: box {text!r} must be four numbers x0,y0,x1,y1")
    return values  # type: ignore[return-value]


def check_output_folder(path: Path) -> None:
    """Refuse an output path that is a file, a non-empty folder, or not writable."""
    if path.exists() and not path.is_dir():
        raise OutputError(f"output path {str(path)!r} exists and is not a folder")
    if path.is_dir() and any(path.iterdir()):
        raise OutputError(f"output folder {str(path)!r} is not empty")
    parent = path if path.is_dir() else path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"output folder {str(path)!r} is not writable")
    # os.access says yes to root everywhere (read-only mounts, /proc): try for real, so
    # that the run fails now and not after sampling. The probe folder is removed at once.
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".dreamlayer-probe-", dir=parent))
    except OSError as exc:
        raise OutputError(f"output folder {str(path)!r} is not writable "
                          f"({exc.strerror})") from None


@contextlib.contextmanager
def library_output_to_log(folder: Path, name: str = "train.log") -> Iterator[TextIO]:
    """Divert file descriptor 2 (absl/orbax logging, XLA and tensorstore messages,
    tracebacks from background threads) to `folder/name`, so that the terminal sees only
    the tool's own lines: yields the terminal's stderr for the progress bar.

    The log is kept (appended) if `folder` exists at the end, otherwise discarded, so a
    run refused before it created anything leaves nothing behind. A `DreamLayerError`
    inside ends the process here: its one line on the terminal, then `os._exit`, so that
    background threads (an async checkpoint write that failed) cannot print after it.
    For command-line entry points only.
    """
    sys.stderr.flush()
    terminal_fd = os.dup(2)
    terminal = os.fdopen(terminal_fd, "w", buffering=1)
    with tempfile.NamedTemporaryFile("w+", prefix=".dreamlayer-log-", suffix=".log") as log:
        os.dup2(log.fileno(), 2)
        error = None
        try:
            yield terminal
        except DreamLayerError as exc:
            error = exc
        finally:
            sys.stderr.flush()
            if folder.is_dir() and log.tell() > 0:
                log.seek(0)
                with open(folder / name, "a") as kept:
                    shutil.copyfileobj(log, kept)
            if error is None:
                os.dup2(terminal_fd, 2)
                terminal.close()
    if error is not None:
        print(error.one_line(), file=terminal, flush=True)
        sys.stdout.flush()
        os._exit(error.exit_code)
