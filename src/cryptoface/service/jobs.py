"""Long requests as jobs: an encrypted inference submitted, watched, cancelled and collected.

An inference from images takes minutes, longer than a browser, a proxy or a user waits on one HTTP call. A job
is accepted at once (202 + id), runs on one of this queue's worker threads, reports the engine's progress per
network layer, stops at the next layer boundary when cancelled, and keeps its result (the encrypted raw template:
nothing the server could read) until collected or until ``keep_seconds`` after it ended.

Who sees a job: only its tenant (another tenant's id answers 404, like an unknown one). What a job costs while it
waits: its request body (the image ciphertexts), so the queue is bounded per tenant and in all, and the service
charges the body to its memory budget until the job ends; a job that finds
the server's heavy slots or memory busy waits in the queue (state ``queued``) instead of failing. Jobs live in the
server's memory: a restart loses them (the client then submits again; nothing is stored half-done).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from cryptoface.errors import CryptoFaceError
from cryptoface.service.errors import BusyError

STATES = ("queued", "running", "done", "failed", "cancelled")
ENDED = frozenset({"done", "failed", "cancelled"})
MAX_JOBS_PER_TENANT = 8  # queued + running + ended-but-kept jobs of one tenant
MAX_JOBS = 256  # all tenants
KEEP_SECONDS = 3600.0  # an ended job's record and result are kept this long
BUSY_POLL_SECONDS = 1.0  # how often a job waiting for a heavy slot tries again
MAX_WAIT_SECONDS = 900.0  # a job that finds the server busy this long fails (503) instead of waiting for ever


class JobNotFoundError(CryptoFaceError):
    """No job with this id belongs to the caller (HTTP 404): unknown, another tenant's, or expired."""


class JobLimitError(CryptoFaceError):
    """The caller (or the server) has as many jobs as allowed (HTTP 429): collect or delete ended ones first."""


class JobNotDoneError(CryptoFaceError):
    """The job has no result: it is still queued or running, or it was cancelled (HTTP 409)."""


class JobCancelledError(CryptoFaceError):
    """Raised inside a job's work at the next progress report after a cancel."""


class JobTimeoutError(CryptoFaceError):
    """The job waited for the server's heavy slots or memory longer than the queue allows (HTTP 503, no retry
    header: the job is over, only a new one can succeed)."""


class JobInternalError(CryptoFaceError):
    """The job's work failed for a reason that is not the caller's (HTTP 500)."""


@dataclass(frozen=True)
class Progress:
    """Where a job stands: ``done`` of ``total`` steps (network layers), the current step's name."""

    done: int = 0
    total: int = 0
    step: str = ""


@dataclass(frozen=True)
class JobView:
    """What the job's owner may read: state, progress, timings and, once failed, the error (a CryptoFaceError,
    which the HTTP app answers with the status the synchronous route would have)."""

    job_id: str
    key_id: str
    kind: str
    state: str
    progress: Progress
    created: float
    started: float | None
    ended: float | None
    error: CryptoFaceError | None


@dataclass
class _Job:
    view: JobView
    tenant: str
    work: Callable[[Callable[[Progress], None]], Any] | None
    cancel: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    on_end: Callable[[], None] | None = None  # called once when the job ends (releases what its request holds)


class JobQueue:
    """Jobs of all tenants, run ``workers`` at a time."""

    def __init__(self, workers: int, *, keep_seconds: float = KEEP_SECONDS, per_tenant: int = MAX_JOBS_PER_TENANT,
                 total: int = MAX_JOBS, max_wait: float = MAX_WAIT_SECONDS) -> None:
        self._pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="job")
        self._keep = keep_seconds
        self._max_wait = max_wait
        self._per_tenant = per_tenant
        self._total = total
        self._jobs: dict[str, _Job] = {}
        self._lock = threading.Lock()

    # -- owner's view ---------------------------------------------------------------------------------
    def submit(self, tenant: str, key_id: str, kind: str, work: Callable[[Callable[[Progress], None]], Any],
               on_end: Callable[[], None] | None = None) -> JobView:
        """Queue ``work(report)``; ``report(progress)`` raises JobCancelledError once the job is cancelled;
        ``on_end()`` runs once when the job ends, however it ends (closing the queue ends the queued ones)."""
        with self._lock:
            self._expire()
            mine = sum(1 for j in self._jobs.values() if j.tenant == tenant)
            if mine >= self._per_tenant:
                raise JobLimitError(f"this tenant has {mine} jobs (at most {self._per_tenant}); collect or delete "
                                    "ended jobs first")
            if len(self._jobs) >= self._total:
                raise JobLimitError(f"the server holds {len(self._jobs)} jobs, its limit; retry later")
            job_id = secrets.token_urlsafe(16)
            view = JobView(job_id, key_id, kind, "queued", Progress(), time.time(), None, None, None)
            job = _Job(view, tenant, work, on_end=on_end)
            self._jobs[job_id] = job
        try:
            self._pool.submit(self._run, job)
        except RuntimeError as exc:  # the queue was closed (the server is stopping)
            with self._lock:
                self._jobs.pop(job_id, None)
            raise JobLimitError("the server is shutting down; submit the job again later") from exc
        return view

    def get(self, tenant: str, job_id: str) -> JobView:
        return self._own(tenant, job_id).view

    def list(self, tenant: str) -> list[JobView]:
        with self._lock:
            self._expire()
            return sorted((j.view for j in self._jobs.values() if j.tenant == tenant), key=lambda v: v.created)

    def result(self, tenant: str, job_id: str) -> Any:
        """The finished job's result; a fresh copy of its error if it failed; JobNotDoneError otherwise."""
        job = self._own(tenant, job_id)
        with self._lock:
            state, result, error = job.view.state, job.result, job.view.error
        if state == "done":
            return result
        if state == "failed" and error is not None:
            raise _fresh(error)  # never the stored object: raising it would attach this request's frames to it
        raise JobNotDoneError(f"job {job_id} is {state}; it has no result")

    def cancel(self, tenant: str, job_id: str) -> JobView:
        """Ask the job to stop: a queued job ends at once, a running one at its next progress report."""
        job = self._own(tenant, job_id)
        job.cancel.set()
        if job.view.state == "queued":
            self._finish(job, "cancelled")
        return job.view

    def delete(self, tenant: str, job_id: str) -> None:
        """Cancel the job if it has not ended, and forget it (its result included)."""
        job = self._own(tenant, job_id)
        self.cancel(tenant, job_id)
        with self._lock:
            self._jobs.pop(job.view.job_id, None)

    def close(self) -> None:
        """Cancel every job and stop the workers (running work stops at its next progress report)."""
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            job.cancel.set()
            if job.view.state == "queued":
                self._finish(job, "cancelled")
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- internals ------------------------------------------------------------------------------------
    def _own(self, tenant: str, job_id: str) -> _Job:
        with self._lock:
            self._expire()
            job = self._jobs.get(job_id)
        # the same answer for unknown and foreign ids: a job id is not an oracle for other tenants' work
        if job is None or job.tenant != tenant or not secrets.compare_digest(job.view.job_id, job_id):
            raise JobNotFoundError("no such job (unknown, another tenant's, or expired)")
        return job

    def _expire(self) -> None:
        now = time.time()
        for job_id in [i for i, j in self._jobs.items()
                       if j.view.ended is not None and now - j.view.ended > self._keep]:
            del self._jobs[job_id]

    def _finish(self, job: _Job, state: str, result: Any = None, error: CryptoFaceError | None = None) -> None:
        """End the job once (later calls change nothing): result first, then the state readers poll, then
        ``on_end`` outside the lock (it may return memory to the system, which takes a while)."""
        with self._lock:
            if job.view.ended is not None:
                return
            job.result = result
            job.view = replace(job.view, state=state, ended=time.time(),
                               error=None if error is None else _fresh(error))
            job.work = None  # drop the request body (image ciphertexts) as soon as the job ends
            on_end, job.on_end = job.on_end, None
        if on_end is not None:
            on_end()

    def _report(self, job: _Job) -> Callable[[Progress], None]:
        def report(progress: Progress) -> None:
            if job.cancel.is_set():
                raise JobCancelledError("the job was cancelled")
            with self._lock:  # "running" from the first report: until then the work waits for its resources
                job.view = replace(job.view, state="running", started=job.view.started or time.time(),
                                   progress=progress)

        return report

    def _run(self, job: _Job) -> None:
        waiting_since = time.time()
        while True:
            with self._lock:
                work = job.work
            if work is None or job.cancel.is_set():
                self._finish(job, "cancelled")
                return
            try:
                result = work(self._report(job))
            except BusyError as exc:  # heavy slots or memory taken: wait in the queue, not as a failure ...
                if time.time() - waiting_since > self._max_wait:  # ... for a while
                    self._finish(job, "failed", error=JobTimeoutError(
                        f"the server stayed busy for {self._max_wait / 60:.0f} minutes ({exc}); submit the job "
                        "again later"))
                    return
                if job.cancel.wait(BUSY_POLL_SECONDS):
                    self._finish(job, "cancelled")
                    return
                continue
            except JobCancelledError:
                self._finish(job, "cancelled")
            except CryptoFaceError as exc:  # a refusal: the owner reads what the synchronous route would answer
                self._finish(job, "failed", error=exc)
            except Exception as exc:  # a bug or a library's failure: its type only (its text may hold values)
                self._finish(job, "failed", error=JobInternalError(
                    f"the job failed on the server ({type(exc).__name__}); retry, or report it to the operator"))
            else:
                self._finish(job, "cancelled" if job.cancel.is_set() else "done", result=result)
            return


def _fresh(error: CryptoFaceError) -> CryptoFaceError:
    """A new exception of ``error``'s class and message, with no traceback and so no frames kept alive."""
    if isinstance(error, BusyError):
        return BusyError(str(error), error.retry_after)
    try:
        return type(error)(*error.args)
    except Exception:  # a class whose constructor takes other arguments
        return JobInternalError(str(error))


__all__ = [
    "ENDED",
    "STATES",
    "JobCancelledError",
    "JobInternalError",
    "JobLimitError",
    "JobNotDoneError",
    "JobNotFoundError",
    "JobQueue",
    "JobTimeoutError",
    "JobView",
    "Progress",
]
