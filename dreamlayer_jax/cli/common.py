"""What the command-line tools share: one-line errors with exit code 2, and the
arguments `sample.py` and its `decompose` / `edit` sub-commands have in common."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from dreamlayer_jax.errors import DreamLayerError, InputError, OutputError
from dreamlayer_jax.pipeline.scene import Layer


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """`--help` keeps the description's line breaks and shows each flag's default (where
    it has a real one: not None, False or an empty list)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or default in (None, False, argparse.SUPPRESS)
                or default == [] or not action.option_strings):
            return text
        return f"{text} (default: %(default)s)"


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit code 2, and `--help`
    shows defaults (`HelpFormatter`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

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


def parse_layer_arg(text: str) -> Layer:
    """`"a red ball@0.1,0.5,0.45,0.9"` -> `Layer` with that box; `"a red ball"` (no `@`)
    -> a `Layer` without a box (a box-variant model refuses it, the paper variant needs
    none). The box is what follows the last `@`."""
    prompt, sep, box = text.rpartition("@")
    if not sep:
        return Layer(text.strip())
    return Layer(prompt.strip(), parse_box(box, f"--layer {text!r}"))


def layers_phrase(count: int) -> str:
    """"1 foreground layer", "2 foreground layers"."""
    return f"{count} foreground layer{'' if count == 1 else 's'}"


def list_files(folder: Path) -> None:
    """Print the files written into `folder`, one a line."""
    for name in sorted(p.name for p in folder.iterdir()):
        print(f"  {folder / name}")


def load_sampling_pipeline(args: argparse.Namespace) -> Any:
    """The `DreamLayerPipeline` of `add_sampling_args`' flags."""
    from dreamlayer_jax.pipeline.dreamlayer import DreamLayerPipeline

    return DreamLayerPipeline.from_pretrained(
        args.model, scheduler=args.scheduler, transparency=args.transparency,
        transparency_tta=args.transparency_tta, unet_patches=args.unet_patch)


def add_sampling_args(p: ArgumentParser) -> None:
    """The model and sampling flags of `sample.py` and `sample.py decompose`."""
    p.add_argument("--model", default=None,
                   help="model folder or hub id, or a built-in model: builtin (the "
                        "default), builtin:box, builtin:paper")
    p.add_argument("--transparency", type=Path, default=None, metavar="PATH",
                   help="a transparent VAE decoder for latent-codec models: LayerDiffuse's "
                        "public file (or a convert_layerdiffuse folder), or one of ours "
                        "(default: the model's own)")
    p.add_argument("--transparency-tta", action="store_true",
                   help="LayerDiffuse's 8-way flip/rotate test-time augmentation (8x slower)")
    p.add_argument("--unet-patch", type=Path, action="append", default=[], metavar="PATH",
                   help="LayerDiffuse's SDXL attention LoRA / conv diff file, merged into the "
                        "UNet (repeatable)")
    p.add_argument("--steps", type=int, default=30, help="denoising steps")
    p.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial noise (same seed, "
                                                      "same scene)")
    p.add_argument("--scheduler", default=None, help="ddim | ddpm | euler | euler_a | "
                                                     "dpm++2m (default: the model's)")
    p.add_argument("--out", type=Path, default=None, help="output folder, new or empty "
                                                          "(default: out/scene-DATE-TIME)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def check_sampling_args(args: argparse.Namespace) -> None:
    """Refuse bad sampling flags before anything is loaded."""
    if args.steps < 1:
        raise InputError(f"--steps must be a positive integer, got {args.steps}")
    if not args.guidance >= 0:
        raise InputError(f"--guidance must be >= 0, got {args.guidance}")
    for name in ("irh_start", "irh_retain"):
        value = getattr(args, name, None)
        if value is not None and not 0.0 <= value <= 1.0:
            raise InputError(f"--{name.replace('_', '-')} must be in [0, 1], got {value}")
    restart, stop = getattr(args, "irh_restart", None), getattr(args, "irh_stop", None)
    for name, value in (("--irh-restart", restart), ("--irh-stop", stop)):
        if value is not None and not value >= 0:
            raise InputError(f"{name} must be a timestep >= 0, got {value}")
    if restart is not None and stop is not None and stop > restart:
        raise InputError(f"--irh-stop {stop:g} (T_H') must not exceed --irh-restart "
                         f"{restart:g} (T_H): IRH pastes the layers from T_H down to T_H'")


def default_out() -> Path:
    """`out/scene-<date>-<time>`, the output folder when `--out` is not given."""
    return Path("out") / time.strftime("scene-%Y%m%d-%H%M%S")


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
