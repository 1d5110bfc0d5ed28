"""`dreamlayer-app` / `python -m dreamlayer_jax.app`: load the model, serve the editor."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from dreamlayer_jax.cli.common import ArgumentParser, run_cli
from dreamlayer_jax.errors import InputError


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="dreamlayer-app",
                       description="The DreamLayer editor in the browser: compose, generate, "
                                   "edit, decompose and download layered scenes.")
    p.add_argument("--model", default=None, help="model folder or hub id (default: the "
                                                  "built-in model)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (another than "
                                                       "127.0.0.1 lets other machines in)")
    p.add_argument("--port", type=int, default=8765, help="port to listen on")
    p.add_argument("--workdir", type=Path, default=Path("out/app"),
                   help="the app's working folder: every upload and result goes here")
    p.add_argument("--max-upload-mb", type=float, default=20.0,
                   help="largest upload accepted, in MB")
    p.add_argument("--scheduler", default=None, help="ddim | ddpm | euler | euler_a | dpm++2m "
                                                     "(default: the model's)")
    return p


def make_app(model: str | None = None, workdir: str | Path = "out/app",
             max_upload_mb: float = 20.0, scheduler: str | None = None) -> Any:
    """Load the pipeline and build the FastAPI app around it."""
    from dreamlayer_jax.app.jobs import DropCancelledCallbackErrors
    from dreamlayer_jax.app.routes import create_app
    from dreamlayer_jax.app.storage import Workdir
    from dreamlayer_jax.pipeline.dreamlayer import DreamLayerPipeline

    if not max_upload_mb > 0:
        raise InputError(f"--max-upload-mb must be positive, got {max_upload_mb}")
    logging.getLogger("jax._src.debugging").addFilter(DropCancelledCallbackErrors())
    pipe = DreamLayerPipeline.from_pretrained(model, scheduler=scheduler)
    return create_app(pipe, Workdir(workdir, int(max_upload_mb * 1e6)))


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 < args.port < 65536:
        raise InputError(f"--port must be in 1..65535, got {args.port}")
    import uvicorn

    app = make_app(args.model, args.workdir, args.max_upload_mb, args.scheduler)
    print(f"DreamLayer editor: http://{args.host}:{args.port}/ (model {app.state.pipe.name}, "
          f"working folder {app.state.workdir.root})", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)
