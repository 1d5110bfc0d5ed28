"""One job at a time on the model: a queue, a worker thread, progress and cancel.

A job is a function `run() -> result id` plus what the page shows about it. The worker
runs jobs in submission order inside the pipeline's progress hook (`ProgressHook.listen`):
each denoising step updates the job's progress, and a cancelled job's listener raises
`JobCancelled`, which stops the sampler between two steps. A queued job that is
cancelled is simply skipped. User errors (`DreamLayerError`) end a job as "failed" with
their message; anything else too, with its type named (the server keeps serving).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dreamlayer_jax.app.storage import NotFound, new_id
from dreamlayer_jax.errors import DreamLayerError
from dreamlayer_jax.pipeline.progress import ProgressHook

log = logging.getLogger("dreamlayer_jax.app")
KEEP_FINISHED = 200  # finished jobs remembered for the page


class JobCancelled(Exception):
    """Raised from the progress hook to stop a cancelled job between steps."""


@dataclass
class Job:
    id: str
    kind: str  # "generate" | "edit" | "decompose"
    label: str
    run: Callable[[], str]
    client: str = ""
    status: str = "queued"  # queued | running | done | failed | cancelled
    done: int = 0
    total: int = 0
    error: str = ""
    result: str = ""
    cancel_requested: bool = False
    created: float = field(default_factory=time.time)

    def public(self, position: int | None) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "label": self.label, "status": self.status,
                "done": self.done, "total": self.total, "error": self.error,
                "result": self.result, "position": position, "client": self.client}


class JobQueue:
    """Jobs in submission order, run one at a time by a daemon thread."""

    def __init__(self, hook: ProgressHook) -> None:
        self._hook = hook
        self._jobs: collections.OrderedDict[str, Job] = collections.OrderedDict()
        self._pending: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._work, name="dreamlayer-jobs", daemon=True)
        self._thread.start()

    def submit(self, kind: str, label: str, run: Callable[[], str], client: str = "") -> Job:
        job = Job(new_id(), kind, label, run, client=client)
        with self._cond:
            self._jobs[job.id] = job
            self._pending.append(job)
            self._forget_old()
            self._cond.notify()
        return job

    def get(self, job_id: str) -> dict[str, Any]:
        with self._cond:
            job = self._jobs.get(job_id)
            if job is None:
                raise NotFound(f"no job {job_id!r}")
            return job.public(self._position(job))

    def list(self) -> list[dict[str, Any]]:
        with self._cond:
            return [j.public(self._position(j)) for j in self._jobs.values()]

    def cancel(self, job_id: str) -> dict[str, Any]:
        with self._cond:
            job = self._jobs.get(job_id)
            if job is None:
                raise NotFound(f"no job {job_id!r}")
            if job.status == "queued":
                self._pending.remove(job)
                job.status = "cancelled"
            elif job.status == "running":
                job.cancel_requested = True
            return job.public(self._position(job))

    def wait_idle(self, timeout: float) -> bool:
        """True once nothing is queued or running (tests, shutdown)."""
        end = time.monotonic() + timeout
        with self._cond:
            while self._pending or any(j.status == "running" for j in self._jobs.values()):
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
        return True

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            for job in self._pending:
                job.status = "cancelled"
            self._pending.clear()
            self._cond.notify_all()

    # -- internals ------------------------------------------------------------------
    def _position(self, job: Job) -> int | None:
        """0 for the running job, 1.. for queued ones, None once finished."""
        if job.status == "running":
            return 0
        if job.status == "queued":
            return self._pending.index(job) + 1
        return None

    def _forget_old(self) -> None:
        finished = [j for j in self._jobs.values() if j.status not in ("queued", "running")]
        for job in finished[: max(0, len(finished) - KEEP_FINISHED)]:
            del self._jobs[job.id]

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
                job = self._pending.popleft()
                job.status = "running"
            self._run(job)
            with self._cond:
                self._cond.notify_all()

    def _run(self, job: Job) -> None:
        def on_step(done: int, total: int) -> None:
            job.done, job.total = done, total
            if job.cancel_requested:
                raise JobCancelled(job.id)

        try:
            with self._hook.listen(on_step):
                result = job.run()
        except Exception as exc:  # noqa: BLE001 -- a job's failure must not stop the worker
            if job.cancel_requested:
                job.status = "cancelled"
            elif isinstance(exc, DreamLayerError):
                job.status, job.error = "failed", exc.one_line()
            else:
                log.exception("job %s (%s) failed", job.id, job.kind)
                job.status, job.error = "failed", f"error: {type(exc).__name__}: {exc}"
            return
        job.result, job.status = result, "done"  # a cancel after the last step came late


class DropCancelledCallbackErrors(logging.Filter):
    """JAX logs an exception raised in a host callback before re-raising it; a cancel
    is not an error worth a traceback in the server's log."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, JobCancelled)
