"""The browser app served by uvicorn in a thread of the test process, on a free port.

In-process so that a test can hold the sampler between steps (`ProgressHook.listen`) and
so that every app test of a session shares one model and its compiled functions.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx

MAX_UPLOAD_MB = 1.0


@contextlib.contextmanager
def running_app(workdir: Path) -> Iterator[SimpleNamespace]:
    import uvicorn

    from dreamlayer_jax.app.server import make_app

    app = make_app(None, workdir, MAX_UPLOAD_MB)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the app's server did not start")
        time.sleep(0.05)
    try:
        yield SimpleNamespace(url=f"http://127.0.0.1:{port}", app=app, workdir=workdir)
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def wait_job(client: httpx.Client, job_id: str, timeout: float = 240) -> dict:
    """The job once it is no longer queued or running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["status"] not in ("queued", "running"):
            return job
        time.sleep(0.1)
    raise TimeoutError(f"job {job_id} still unfinished after {timeout} s")
