"""The HTTP interface: the page, its static files and the JSON API under /api.

Every user error is a `DreamLayerError` (`dreamlayer_jax.errors`), answered as
`{"error": "error: ..."}` with status 400 (404 for an unknown id, 413 for too large an
upload); the page shows the message. Routes are plain functions, so FastAPI runs them
on its thread pool and the server keeps answering while the model works.
"""

from __future__ import annotations

import io
import json
import zipfile
from contextlib import asynccontextmanager
from importlib import resources
from typing import Annotated, Any

from fastapi import FastAPI, File, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from dreamlayer_jax.app import tasks
from dreamlayer_jax.app.jobs import JobQueue
from dreamlayer_jax.app.storage import (
    RESULT_FILE,
    NotFound,
    TooLarge,
    Workdir,
    read_saved_files,
)
from dreamlayer_jax.errors import DreamLayerError, InputError
from dreamlayer_jax.pipeline.dreamlayer import DreamLayerPipeline
from dreamlayer_jax.schedulers.factory import SCHEDULERS

MEDIA = {".png": "image/png", ".psd": "image/vnd.adobe.photoshop", ".ora": "image/openraster",
         ".json": "application/json", ".safetensors": "application/octet-stream"}


def create_app(pipe: DreamLayerPipeline, workdir: Workdir) -> FastAPI:
    """The app around one loaded pipeline and its working folder."""
    jobs = JobQueue(pipe.progress_hook)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        jobs.stop()

    app = FastAPI(title="DreamLayer", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.pipe, app.state.jobs, app.state.workdir = pipe, jobs, workdir
    static = resources.files("dreamlayer_jax.app") / "static"
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.exception_handler(DreamLayerError)
    async def user_error(_: Request, exc: DreamLayerError) -> JSONResponse:
        status = 404 if isinstance(exc, NotFound) else 413 if isinstance(exc, TooLarge) else 400
        return JSONResponse({"error": exc.one_line()}, status_code=status)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(str(static / "index.html"), media_type="text/html")

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        return {"model": pipe.name, "variant": pipe.config.variant,
                "resolution": pipe.config.resolution, "max_foregrounds": pipe.max_foregrounds,
                "scheduler": pipe.scheduler.kind, "schedulers": sorted(SCHEDULERS),
                "max_upload_mb": workdir.max_upload_bytes / 1e6}

    def submit(kind: str, request: Request, body: Any, prepare: Any) -> JSONResponse:
        label, run = prepare(pipe, workdir, body)
        job = jobs.submit(kind, label, run, client=request.headers.get("x-client", "")[:40])
        return JSONResponse(jobs.get(job.id), status_code=202)

    @app.post("/api/generate")
    async def generate(request: Request) -> JSONResponse:
        body = await _json(request)
        return await _in_thread(submit, "generate", request, body, tasks.prepare_generate)

    @app.post("/api/edit")
    async def edit(request: Request) -> JSONResponse:
        body = await _json(request)
        return await _in_thread(submit, "edit", request, body, tasks.prepare_edit)

    @app.post("/api/decompose")
    async def decompose(request: Request) -> JSONResponse:
        body = await _json(request)
        return await _in_thread(submit, "decompose", request, body, tasks.prepare_decompose)

    @app.get("/api/jobs")
    def list_jobs() -> list[dict[str, Any]]:
        return jobs.list()

    @app.get("/api/jobs/{job_id}")
    def get_job(job_id: str) -> dict[str, Any]:
        return jobs.get(job_id)

    @app.post("/api/jobs/{job_id}/cancel")
    def cancel_job(job_id: str) -> dict[str, Any]:
        return jobs.cancel(job_id)

    @app.post("/api/uploads")
    def upload(request: Request, file: Annotated[UploadFile, File()]) -> dict[str, Any]:
        _check_length(request, workdir)
        data = _read_limited(file, workdir)
        uid, (width, height) = workdir.save_picture(data, f"the upload {file.filename!r}")
        return {"id": uid, "width": width, "height": height, "url": f"/api/uploads/{uid}"}

    @app.get("/api/uploads/{uid}")
    def get_upload(uid: str) -> FileResponse:
        return FileResponse(str(workdir.upload_path(uid)), media_type="image/png")

    @app.post("/api/open")
    def open_saved(request: Request, files: Annotated[list[UploadFile], File()]) -> dict[str, Any]:
        _check_length(request, workdir, factor=4)
        found = read_saved_files([(f.filename or "", _read_limited(f, workdir)) for f in files],
                                 workdir.max_upload_bytes)
        return tasks.import_saved(pipe, workdir, found)

    @app.get("/api/results")
    def list_results() -> list[dict[str, Any]]:
        return [_describe(workdir, r["id"], r["scene"]) for r in workdir.list_results()]

    @app.get("/api/results/{rid}")
    def get_result(rid: str) -> dict[str, Any]:
        record = json.loads((workdir.result_dir(rid) / "scene.json").read_text("utf-8"))
        return _describe(workdir, rid, record)

    @app.get("/api/results/{rid}/files/{name}")
    def result_file(rid: str, name: str, download: bool = False) -> FileResponse:
        path = workdir.result_file(rid, name)
        return FileResponse(str(path), media_type=MEDIA[path.suffix],
                            filename=f"dreamlayer-{rid[:8]}-{name}" if download else None)

    @app.get("/api/results/{rid}/zip")
    def result_zip(rid: str) -> Response:
        folder = workdir.result_dir(rid)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(folder.iterdir()):
                if RESULT_FILE.fullmatch(path.name):
                    archive.write(path, f"dreamlayer-{rid[:8]}/{path.name}")
        headers = {"Content-Disposition": f'attachment; filename="dreamlayer-{rid[:8]}.zip"'}
        return Response(buffer.getvalue(), media_type="application/zip", headers=headers)

    return app


def _describe(workdir: Workdir, rid: str, record: dict[str, Any]) -> dict[str, Any]:
    folder = workdir.root / "results" / rid
    files = sorted(p.name for p in folder.iterdir() if RESULT_FILE.fullmatch(p.name))
    return {"id": rid, "scene": record, "files": files,
            "base": f"/api/results/{rid}/files/"}


async def _json(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except (UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"the request is not valid JSON: {exc}") from exc


async def _in_thread(fn: Any, *args: Any) -> Any:
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(fn, *args)


def _check_length(request: Request, workdir: Workdir, factor: int = 1) -> None:
    """Refuse by Content-Length before reading the body (the margin is the form's)."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > factor * workdir.max_upload_bytes + 65536:
        raise TooLarge(f"the upload is {int(length) / 1e6:.1f} MB, more than the "
                       f"{workdir.max_upload_bytes / 1e6:g} MB this app accepts")


def _read_limited(file: UploadFile, workdir: Workdir) -> bytes:
    data = file.file.read(workdir.max_upload_bytes + 1)
    if len(data) > workdir.max_upload_bytes:
        raise TooLarge(f"the upload {file.filename!r} is larger than the "
                       f"{workdir.max_upload_bytes / 1e6:g} MB this app accepts")
    return data
