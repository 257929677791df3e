"""The web app's long operations (enrol, verify, identify, evaluate) as tasks a page can watch and cancel.

A task runs on the app's one worker thread (the client's backend holds the secret key and some backends are not
thread-safe; the 2-core machines this targets gain nothing from two encryptions at once), as named steps, each
timed: align, encrypt, server inference (with the server job's per-layer progress), refresh, match + decrypt.
Tasks outlive the browser tab: closing it changes nothing, and the tasks page lists them for as long as the app
runs. Cancelling a task cancels the server's job (it stops at its next layer); a step that is not a server job
stops at the next step boundary.

A task's ``result`` is what its page shows the local user (a decision, a score); it is never logged and never
sent anywhere.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from cryptoface.client.transport import JobInfo
from cryptoface.errors import CryptoFaceError

log = logging.getLogger(__name__)
MAX_TASKS = 200  # the oldest ended tasks are forgotten past this many


class TaskCancelled(CryptoFaceError):
    """The user cancelled the task."""


@dataclass
class Step:
    name: str
    seconds: float | None = None  # None while it has not ended


@dataclass
class Task:
    """One operation as its page shows it."""

    task_id: str
    kind: str  # enrol | verify | identify | evaluate
    title: str
    state: str = "queued"  # queued | running | done | failed | cancelled
    steps: list[Step] = field(default_factory=list)
    job: JobInfo | None = None  # the server's inference job while it runs
    result: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    created: float = field(default_factory=time.time)
    ended: float | None = None
    cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def current(self) -> str:
        running = [s.name for s in self.steps if s.seconds is None]
        return running[-1] if running else ""

    def view(self) -> dict[str, Any]:
        """The task as JSON for the page's script (the result included: it is the local user's own page)."""
        job = self.job
        return {
            "task_id": self.task_id, "kind": self.kind, "title": self.title, "state": self.state,
            "steps": [{"name": s.name, "seconds": s.seconds} for s in self.steps],
            "server": None if job is None else {"state": job.state, "done": job.done, "total": job.total,
                                                "step": job.step},
            "result": self.result, "error": self.error,
        }


class Run:
    """Handed to a task's work: named, timed steps and the server job's progress; raises once cancelled."""

    def __init__(self, task: Task, lock: threading.Lock) -> None:
        self.task = task
        self._lock = lock

    def step(self, name: str) -> _StepTimer:
        if self.task.cancel.is_set():
            raise TaskCancelled("cancelled")
        return _StepTimer(self, name)

    def record(self, name: str, seconds: float) -> None:
        """A step that was done before the task began (e.g. aligning the photo at upload)."""
        with self._lock:
            self.task.steps.append(Step(name, round(seconds, 3)))

    def job(self, job: JobInfo) -> None:
        """The client's progress callback: the server job's state, for the page. Raises once the task is cancelled,
        so the client stops waiting and deletes the job (also when it was cancelled before its id was known)."""
        with self._lock:
            self.task.job = job
        if self.task.cancel.is_set():
            raise TaskCancelled("cancelled")


class _StepTimer:
    def __init__(self, run: Run, name: str) -> None:
        self.run, self.name, self.t0 = run, name, 0.0

    def __enter__(self) -> None:
        with self.run._lock:
            self.run.task.steps.append(Step(self.name))
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: Any) -> None:
        with self.run._lock:
            self.run.task.steps[-1].seconds = round(time.perf_counter() - self.t0, 3)


Work = Callable[[Run], dict[str, Any]]


class TaskRunner:
    """Tasks run one at a time in submission order; ``cancel_job`` asks the server to stop a job."""

    def __init__(self, cancel_job: Callable[[str], Any]) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="ui-task")
        self._tasks: dict[str, Task] = {}
        self._lock = threading.Lock()
        self._cancel_job = cancel_job

    def submit(self, kind: str, title: str, work: Work) -> Task:
        task = Task(secrets.token_urlsafe(12), kind, title)
        with self._lock:
            self._tasks[task.task_id] = task
            ended = [t for t in self._tasks.values() if t.ended is not None]
            for old in sorted(ended, key=lambda t: t.created)[: max(0, len(self._tasks) - MAX_TASKS)]:
                del self._tasks[old.task_id]
        self._pool.submit(self._run, task, work)
        return task

    def get(self, task_id: str) -> Task | None:
        with self._lock:
            return self._tasks.get(task_id)

    def all(self) -> list[Task]:
        with self._lock:
            return sorted(self._tasks.values(), key=lambda t: t.created, reverse=True)

    def view(self, task_id: str) -> dict[str, Any] | None:
        with self._lock:
            task = self._tasks.get(task_id)
            return None if task is None else task.view()

    def cancel(self, task_id: str) -> Task | None:
        """Stop the task: at once if queued, else its server job and then the next step boundary."""
        task = self.get(task_id)
        if task is None or task.ended is not None:
            return task
        task.cancel.set()
        job = task.job
        if job is not None and job.state in ("queued", "running"):
            try:
                self._cancel_job(job.job_id)
            except CryptoFaceError as exc:  # the job ended meanwhile: the task ends on its own
                log.info("cancelling the server job failed: %s", type(exc).__name__)
        return task

    def close(self, wait: float = 5.0) -> None:
        """Cancel every task (their server jobs too, for at most ``wait`` seconds: a hung server does not hold the
        app's exit) and stop the worker."""
        def cancel_all() -> None:
            for task in self.all():
                self.cancel(task.task_id)

        closer = threading.Thread(target=cancel_all, name="ui-close", daemon=True)
        closer.start()
        closer.join(wait)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self, task: Task, work: Work) -> None:
        if task.cancel.is_set():
            self._end(task, "cancelled")
            return
        with self._lock:
            task.state = "running"
        try:
            result = work(Run(task, self._lock))
        except TaskCancelled:
            self._end(task, "cancelled")
        except CryptoFaceError as exc:
            if task.cancel.is_set():
                self._end(task, "cancelled")
            else:
                self._end(task, "failed", error=str(exc))
        except Exception as exc:  # a bug: the page says so, the log has the type (never values or keys)
            log.error("task %s (%s) failed: %s", task.task_id, task.kind, type(exc).__name__)
            self._end(task, "failed", error=f"internal error ({type(exc).__name__}); see the terminal")
        else:
            self._end(task, "cancelled" if task.cancel.is_set() else "done", result=result)

    def _end(self, task: Task, state: str, *, result: dict[str, Any] | None = None, error: str | None = None) -> None:
        with self._lock:
            task.state, task.error, task.ended = state, error, time.time()
            if result is not None:
                task.result = result
            for s in task.steps:
                if s.seconds is None:
                    s.seconds = 0.0


__all__ = ["Run", "Task", "TaskCancelled", "TaskRunner"]
