"""The in-process transport: a :class:`~cryptoface.service.core.MatchService` called directly, as one tenant.

Same checks as over HTTP (ownership, proof of possession, name rule, limits), same answers: the service's
refusals are turned into :class:`~cryptoface.client.transport.ServerError` with the status and code the HTTP
server would send, so :class:`~cryptoface.client.client.Client` handles both transports alike. The service is
imported lazily: importing the client never imports the server stack.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, TypeVar

from cryptoface.client.transport import (
    LOCAL_TENANT,
    Challenge,
    ImageProbe,
    JobInfo,
    KeySetInfo,
    PairChunk,
    Probe,
    ScoreChunk,
    ServerError,
    Subject,
    TemplateProbe,
)

T = TypeVar("T")
LOCAL_ACTOR = "local"  # what the audit log names as the actor of in-process requests


def _http_equivalent(exc: BaseException) -> tuple[int, str] | None:
    """(status, code) the HTTP server answers for this service or store error (None: not a refusal it maps)."""
    from cryptoface.service import errors as se
    from cryptoface.service import jobs as sj
    from cryptoface.store import base as sb

    table: list[tuple[type[BaseException], int, str]] = [
        (se.UnauthorizedError, 401, "unauthorized"),
        (se.ProofFailedError, 403, "proof_failed"),
        (sb.UnknownKeySetError, 404, "unknown_key_set"),
        (sb.UnknownSubjectError, 404, "unknown_subject"),
        (sb.UnknownTemplateError, 404, "unknown_template"),
        (sb.KeySetPendingError, 409, "key_set_pending"),
        (sb.TemplateCapError, 409, "template_cap"),
        (sb.ConflictError, 409, "conflict"),
        (se.BusyError, 503, "busy"),
        (sj.JobNotFoundError, 404, "unknown_job"),
        (sj.JobNotDoneError, 409, "job_not_done"),
        (sj.JobLimitError, 429, "too_many_jobs"),
        (sj.JobTimeoutError, 503, "job_timed_out"),
        (sj.JobInternalError, 500, "internal_error"),
    ]
    return next(((status, code) for cls, status, code in table if isinstance(exc, cls)), None)


def _translated(method: Callable[..., T]) -> Callable[..., T]:
    """Re-raise the service's refusals as the ServerError the HTTP transport would raise."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kw: Any) -> T:
        try:
            return method(*args, **kw)
        except ServerError:
            raise
        except Exception as exc:
            mapped = _http_equivalent(exc)
            if mapped is None:
                raise
            raise ServerError(mapped[0], mapped[1], str(exc)) from exc

    return wrapper


def _subject(record: Any) -> Subject:
    return Subject(int(record.id), str(record.name), tuple(int(i) for i in record.template_ids))


class InProcessTransport:
    """Calls a MatchService in this process as tenant ``tenant_id`` (default: a tenant named "local", created
    on first use, as the demo and tools need no operator)."""

    def __init__(self, service: Any, tenant_id: str | None = None) -> None:
        from cryptoface.service.auth import Caller

        self.service = service
        self.caller = Caller(tenant_id or local_tenant(service), LOCAL_ACTOR)

    def health(self) -> dict[str, Any]:
        return {"status": "ok", **self.service.info()}

    def key_set(self, key_id: str) -> KeySetInfo | None:
        from cryptoface.store.base import UnknownKeySetError

        try:
            r = self.service.key_set(self.caller, key_id)
        except UnknownKeySetError:
            return None
        return KeySetInfo(r.key_id, r.backend, r.status, tuple(r.key_kinds))

    @_translated
    def create_key_set(self, backend: str, params_json: str, public_key: bytes) -> Challenge:
        record, ch = self.service.register(self.caller, backend, params_json, public_key)
        return Challenge(record.key_id, ch.ciphertext, int(ch.count), ch.nonce)

    @_translated
    def prove(self, key_id: str, proof: str) -> str:
        return str(self.service.prove(self.caller, key_id, proof).status)

    @_translated
    def add_key(self, key_id: str, kind: str, data: bytes) -> None:
        self.service.add_key(self.caller, key_id, kind, data)

    @_translated
    def delete_key_set(self, key_id: str) -> None:
        self.service.delete_key_set(self.caller, key_id)

    @_translated
    def infer(self, key_id: str, probe: ImageProbe) -> TemplateProbe:
        out = self.service.infer(self.caller, key_id, probe.to_request())
        return TemplateProbe.of_result(out["ciphertext"], out)

    @_translated
    def model_tail(self) -> tuple[str, bytes]:
        out = self.service.model_tail(self.caller)
        return str(out["model_id"]), out["tail"]

    @_translated
    def submit_infer(self, key_id: str, probe: ImageProbe) -> JobInfo:
        return _job(self.service.submit_infer(self.caller, key_id, probe.to_request()))

    @_translated
    def job(self, job_id: str) -> JobInfo:
        return _job(self.service.job(self.caller, job_id))

    @_translated
    def jobs(self) -> list[JobInfo]:
        return [_job(v) for v in self.service.job_list(self.caller)]

    @_translated
    def job_result(self, job_id: str) -> TemplateProbe:
        out = self.service.job_result(self.caller, job_id)
        return TemplateProbe.of_result(out["ciphertext"], out)

    @_translated
    def cancel_job(self, job_id: str) -> JobInfo:
        return _job(self.service.cancel_job(self.caller, job_id))

    @_translated
    def delete_job(self, job_id: str) -> None:
        self.service.delete_job(self.caller, job_id)

    @_translated
    def create_subject(self, key_id: str, subject: str, probes: list[Probe]) -> Subject:
        return _subject(self.service.create_subject(self.caller, key_id, subject, [p.to_request() for p in probes]))

    @_translated
    def add_templates(self, key_id: str, subject_id: int, probes: list[Probe]) -> Subject:
        return _subject(self.service.add_templates(self.caller, key_id, subject_id, [p.to_request() for p in probes]))

    @_translated
    def subjects(self, key_id: str) -> list[Subject]:
        return [_subject(r) for r in self.service.subjects(self.caller, key_id)]

    @_translated
    def delete_subject(self, key_id: str, subject_id: int) -> None:
        self.service.delete_subject(self.caller, key_id, subject_id)

    @_translated
    def delete_template(self, key_id: str, template_id: int) -> None:
        self.service.delete_template(self.caller, key_id, template_id)

    @_translated
    def verify(self, key_id: str, subject: str, probe: Probe, mode: str) -> list[bytes]:
        return self.service.verify(self.caller, key_id, subject, probe.to_request(), mode=mode)

    @_translated
    def identify(self, key_id: str, probe: Probe, mode: str) -> list[ScoreChunk]:
        chunks = self.service.identify(self.caller, key_id, probe.to_request(), mode=mode)
        return [ScoreChunk(ct, tuple(slots), tuple(names)) for ct, slots, names in chunks]

    @_translated
    def compare(self, key_id: str, pairs: list[tuple[Probe, Probe]]) -> list[PairChunk]:
        chunks = self.service.compare(self.caller, key_id, [(a.to_request(), b.to_request()) for a, b in pairs])
        return [PairChunk(ct, tuple(slots)) for ct, slots in chunks]

    @_translated
    def audit(self, after: int = 0) -> list[dict[str, Any]]:
        return [dataclasses.asdict(r) for r in self.service.audit(self.caller, after)]

    def close(self) -> None:
        """The service belongs to the caller; nothing to release here."""


def _job(v: Any) -> JobInfo:
    err = None if v.error is None else f"{type(v.error).__name__}: {v.error}"
    return JobInfo(v.job_id, v.key_id, v.kind, v.state, v.progress.done, v.progress.total, v.progress.step,
                   v.created, v.started, v.ended, err)


def local_tenant(service: Any) -> str:
    """The id of the service's tenant named "local", created (as the admin) when missing."""
    from cryptoface.service.auth import ADMIN_ACTOR, Caller
    from cryptoface.store.base import ConflictError

    admin = Caller(None, ADMIN_ACTOR)
    found = [t for t in service.tenants(admin) if t.name == LOCAL_TENANT]
    if found:
        return found[0].tenant_id
    try:
        return service.create_tenant(admin, LOCAL_TENANT).tenant_id
    except ConflictError:  # made meanwhile by another client of this service
        return next(t.tenant_id for t in service.tenants(admin) if t.name == LOCAL_TENANT)
