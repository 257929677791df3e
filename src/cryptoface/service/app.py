"""FastAPI app of the matching server: tenants' API keys, create-only key sets, subject lifecycle, encrypted matching.

Every route except ``GET /v1/health`` needs a credential: a tenant's API key (``x-api-key``) on tenant routes, the
admin key (``Authorization: Bearer``) on ``/v1/admin/...``. Ciphertexts and keys travel base64-encoded inside
JSON, or as a raw ``application/octet-stream`` body for single large evaluation keys
(``PUT /v1/keysets/{id}/keys/{kind}``). Subject names travel in bodies, never in URLs, so the access log holds
ids only; the server itself logs nothing. Every refusal is a 4xx (503 when busy) with ``{"error", "detail"}``,
mapped from the error classes in one table, :data:`ERRORS`.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Path, Query, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from cryptoface.backends import available_backends
from cryptoface.errors import (
    BackendUnavailableError,
    CiphertextError,
    CryptoFaceError,
    MissingKeyError,
    ParameterError,
)
from cryptoface.match.threshold import DEFAULT_THRESHOLD
from cryptoface.names import InvalidNameError
from cryptoface.service import limits
from cryptoface.service.auth import Authenticator, Caller
from cryptoface.service.core import MatchService, Probe
from cryptoface.service.errors import (
    AdminDisabledError,
    BadKeyKindError,
    BusyError,
    EngineUnavailableError,
    ProofFailedError,
    ServiceInputError,
    UnauthorizedError,
)
from cryptoface.service.jobs import (
    JobCancelledError,
    JobInternalError,
    JobLimitError,
    JobNotDoneError,
    JobNotFoundError,
    JobTimeoutError,
    JobView,
)
from cryptoface.service.models import (
    HEX64,
    ApiKeyOut,
    AuditOut,
    ChallengeOut,
    CompareChunk,
    CompareIn,
    CompareOut,
    ErrorOut,
    IdentifyChunk,
    IdentifyIn,
    IdentifyOut,
    ImageProbe,
    InferIn,
    InferOut,
    JobOut,
    JobProgress,
    KeySetIn,
    KeySetOut,
    ModelTailOut,
    ProofIn,
    ProofOut,
    RegisteredOut,
    SubjectIn,
    SubjectOut,
    TemplatesIn,
    TenantIn,
    TenantOut,
    VerifyIn,
    VerifyOut,
)
from cryptoface.service.models import TemplateProbe as TemplateProbeIn
from cryptoface.store.base import (
    ConflictError,
    KeySetPendingError,
    KeySetRecord,
    StoreError,
    StoreUnavailableError,
    SubjectRecord,
    TemplateCapError,
    TemplateStore,
    UnknownApiKeyError,
    UnknownKeySetError,
    UnknownSubjectError,
    UnknownTemplateError,
    UnknownTenantError,
)

API_VERSION = "2"
DEFAULT_MAX_BODY = limits.JSON_LIMIT
DEFAULT_MAX_KEY_BODY = limits.KEY_LIMIT
MAX_ID = 2**63 - 1  # SQL integer ids: anything larger is refused by validation, never by the database

# (error class, status, code): the first matching row wins, so subclasses come before their bases
ERRORS: list[tuple[type[BaseException], int, str]] = [
    (UnauthorizedError, 401, "unauthorized"),
    (ProofFailedError, 403, "proof_failed"),
    (UnknownKeySetError, 404, "unknown_key_set"),
    (UnknownSubjectError, 404, "unknown_subject"),
    (UnknownTemplateError, 404, "unknown_template"),
    (UnknownTenantError, 404, "unknown_tenant"),
    (UnknownApiKeyError, 404, "unknown_api_key"),
    (JobNotFoundError, 404, "unknown_job"),
    (JobNotDoneError, 409, "job_not_done"),
    (JobCancelledError, 409, "job_cancelled"),
    (JobLimitError, 429, "too_many_jobs"),
    (JobTimeoutError, 503, "job_timed_out"),
    (JobInternalError, 500, "internal_error"),
    (KeySetPendingError, 409, "key_set_pending"),
    (TemplateCapError, 409, "template_cap"),
    (ConflictError, 409, "conflict"),
    (EngineUnavailableError, 501, "engine_unavailable"),
    (AdminDisabledError, 503, "admin_disabled"),
    (BusyError, 503, "busy"),
    (StoreUnavailableError, 503, "store_unavailable"),
    (BadKeyKindError, 400, "bad_key_kind"),
    (CiphertextError, 400, "bad_ciphertext"),
    (ParameterError, 400, "bad_parameters"),
    (MissingKeyError, 400, "missing_key"),
    (BackendUnavailableError, 400, "backend_unavailable"),
    (InvalidNameError, 400, "bad_name"),
    (ServiceInputError, 400, "bad_request"),
    (StoreError, 400, "bad_request"),
    (CryptoFaceError, 400, "bad_request"),
]


def error_status(exc: BaseException) -> tuple[int, str]:
    """(HTTP status, error code) of an error class, from :data:`ERRORS`."""
    for cls, status, code in ERRORS:
        if isinstance(exc, cls):
            return status, code
    raise LookupError(type(exc).__name__)


def _err(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses for these statuses (every one the route can really return)."""
    out: dict[int | str, dict[str, Any]] = {s: {"model": ErrorOut} for s in statuses}
    if 503 in statuses:
        out[503]["headers"] = {"Retry-After": {"description": "seconds to wait before retrying (when busy)",
                                               "schema": {"type": "string"}}}
    return out


TENANT = (401, 503)  # every tenant route: credential refused; the budget refuses the request body
BODY = (400, 413, 422)  # every route with a body (400: bytes that are not even JSON text)
KEYSET = (*TENANT, 404, 422)  # a key set named in the path (a malformed id is a 422)
MATCH = (*KEYSET, *BODY, 400, 409, 501)

KeyId = Annotated[str, Path(pattern=HEX64, description="the key set's id: sha256 hex of its public key")]
SubjectId = Annotated[int, Path(ge=1, le=MAX_ID)]
TemplateId = Annotated[int, Path(ge=1, le=MAX_ID)]
JobId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{22}$", description="a job's id (from POST .../jobs)")]
KeyKind = Annotated[str, Path(min_length=1, max_length=64, description="'relin' or 'rotation:<step>'")]

_api_key = APIKeyHeader(name="x-api-key", auto_error=False, description="a tenant's API key")
_bearer = HTTPBearer(auto_error=False, description="the admin key")


def _b64(data: str, what: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ServiceInputError(f"{what} is not valid base64") from exc


def _probe(p: TemplateProbeIn | ImageProbe) -> Probe:
    """The service's probe dict, ciphertexts decoded (400 for bad base64, before any computation)."""
    if isinstance(p, ImageProbe):
        return {"images": [_b64(x, "image ciphertext") for x in p.images], "resolution": p.resolution,
                "packing": p.packing}
    return {"ciphertext": _b64(p.ciphertext, "template ciphertext"), "stride": p.stride, "replicas": p.replicas,
            "normalised": p.normalised}


def _key_set_out(r: KeySetRecord) -> KeySetOut:
    return KeySetOut(key_id=r.key_id, backend=r.backend, key_kinds=list(r.key_kinds), status=r.status)  # type: ignore[arg-type]


def _subject_out(s: SubjectRecord) -> SubjectOut:
    return SubjectOut(subject_id=s.id, subject=s.name, template_ids=list(s.template_ids))


def _infer_out(out: dict[str, Any]) -> InferOut:
    return InferOut(ciphertext=base64.b64encode(out["ciphertext"]).decode(), stride=out["stride"],
                    replicas=out["replicas"], trunk=out["trunk"], model_id=out["model_id"],
                    tail_digest=out["tail_digest"])


def _job_out(v: JobView) -> JobOut:
    error = None
    if v.error is not None:
        error = ErrorOut(error=error_status(v.error)[1], detail=str(v.error))
    return JobOut(job_id=v.job_id, key_id=v.key_id, kind=v.kind, state=v.state,
                  progress=JobProgress(done=v.progress.done, total=v.progress.total, step=v.progress.step),
                  created=v.created, started=v.started, ended=v.ended, error=error)


def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    """422 in the API's error shape; the offending input is never echoed (it can be 64 MiB of base64)."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    parts = [f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in errors[:10]]
    return JSONResponse({"error": "invalid_request", "detail": "; ".join(parts) or "invalid request"},
                        status_code=422)


def _http_error(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own refusals (unparseable body, no such route, method) in the API's error shape."""
    status = getattr(exc, "status_code", 400)
    code = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}.get(status, "http_error")
    return JSONResponse({"error": code, "detail": str(getattr(exc, "detail", ""))}, status_code=status,
                        headers=getattr(exc, "headers", None))


def _error(request: Request, exc: Exception) -> JSONResponse:
    status, code = error_status(exc)
    retry = isinstance(exc, BusyError | StoreUnavailableError)
    headers = {"Retry-After": str(exc.retry_after)} if retry else None  # type: ignore[attr-defined]
    return JSONResponse({"error": code, "detail": str(exc)}, status_code=status, headers=headers)


def _known(request: Request) -> Caller | None:
    """The caller the middleware authenticated before the body was read (see :mod:`.limits`)."""
    return request.scope.get("state", {}).get(limits.CALLER)


def _tenant(request: Request, token: Annotated[str | None, Security(_api_key)]) -> Caller:
    return _known(request) or request.app.state.auth.tenant(token)


def _admin(request: Request, cred: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]) -> Caller:
    return _known(request) or request.app.state.auth.admin(cred.credentials if cred else None)


def _anyone(request: Request, token: Annotated[str | None, Security(_api_key)],
            cred: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]) -> Caller:
    known = _known(request)
    if known is not None:
        return known
    auth = request.app.state.auth
    return auth.admin(cred.credentials) if cred is not None else auth.tenant(token)


Tenant = Annotated[Caller, Depends(_tenant)]
Admin = Annotated[Caller, Depends(_admin)]
Anyone = Annotated[Caller, Depends(_anyone)]


def create_app(
    store: TemplateStore,
    *,
    model: Any = None,
    model_id: str = "none",
    threshold: float = DEFAULT_THRESHOLD,
    executor: Any = None,
    admin_key: str | None = None,
    max_heavy: int = 1,
    memory_budget: int | None = None,
    budget_baseline: int | None = None,
    observe_rss: bool = False,
    retry_after: int = 30,
    max_body_bytes: int = DEFAULT_MAX_BODY,
    max_key_bytes: int = DEFAULT_MAX_KEY_BODY,
    max_registration_bytes: int = limits.REGISTRATION_LIMIT,
    device: str = "cpu",
    plaintext_budget: int | None = None,
) -> FastAPI:
    """The HTTP app over ``store``. ``model`` (a FusedModel) enables inference from encrypted images;
    ``executor`` (e.g. a RayExecutor) runs it as patch-parallel units and shards 1:N over its workers;
    ``admin_key`` None leaves admin routes off; ``max_heavy`` and ``memory_budget`` (bytes, default 70 % of the
    machine's memory) bound concurrent work: past them a request gets 503 + Retry-After; ``observe_rss``,
    ``device`` and ``plaintext_budget``: see :class:`MatchService`."""
    service = MatchService(store, model=model, model_id=model_id, threshold=threshold, executor=executor,
                           memory_budget=memory_budget, budget_baseline=budget_baseline, observe_rss=observe_rss,
                           max_heavy=max_heavy,
                           retry_after=retry_after, device=device, plaintext_budget=plaintext_budget)
    auth = Authenticator(store, admin_key)
    backends = available_backends()  # once: importing a missing library again on every health check costs

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        service.close()  # running jobs stop at their next layer; queued ones are dropped

    app = FastAPI(
        lifespan=lifespan,
        title="CryptoFace matching server",
        version=API_VERSION,
        description="Encrypted face templates: the server never holds a secret key, a face, a template or a score "
        "in the clear. Tenant routes take an API key (x-api-key); /v1/admin routes the admin key (Bearer).",
    )
    app.state.service = service
    app.state.auth = auth
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    for cls, _, _ in ERRORS:
        app.add_exception_handler(cls, _error)

    # -- health ---------------------------------------------------------------------------------------
    @app.get("/v1/health")
    @limits.policy(auth=None)
    async def health() -> dict[str, Any]:
        # async and lock-free: it answers even while every worker thread is busy with heavy requests
        return {"status": "ok", "api": API_VERSION, "backends": backends, **service.info()}

    # -- admin ----------------------------------------------------------------------------------------
    @app.post("/v1/admin/tenants", status_code=201, response_model=TenantOut,
              responses=_err(401, 409, 503, *BODY))
    @limits.policy("admin", auth="admin")
    def create_tenant(body: TenantIn, caller: Admin) -> TenantOut:
        t = service.create_tenant(caller, body.name)
        return TenantOut(tenant_id=t.tenant_id, name=t.name, created_at=t.created_at)

    @app.get("/v1/admin/tenants", response_model=list[TenantOut], responses=_err(401, 503))
    @limits.policy(auth="admin")
    def tenants(caller: Admin) -> list[TenantOut]:
        return [TenantOut(tenant_id=t.tenant_id, name=t.name, created_at=t.created_at)
                for t in service.tenants(caller)]

    @app.post("/v1/admin/tenants/{tenant_id}/api-keys", status_code=201, response_model=ApiKeyOut,
              responses=_err(401, 404, 413, 422, 503))
    @limits.policy("admin", auth="admin")
    def create_api_key(tenant_id: Annotated[str, Path(max_length=64)], caller: Admin) -> ApiKeyOut:
        rec, token = service.create_api_key(caller, tenant_id)
        return ApiKeyOut(key_id=rec.key_id, tenant_id=rec.tenant_id, created_at=rec.created_at, token=token)

    @app.delete("/v1/admin/api-keys/{key_id}", status_code=204, responses=_err(401, 404, 422, 503))
    @limits.policy(auth="admin")
    def revoke_api_key(key_id: Annotated[str, Path(max_length=64)], caller: Admin) -> Response:
        service.revoke_api_key(caller, key_id)
        return Response(status_code=204)

    @app.get("/v1/audit", response_model=list[AuditOut], responses=_err(401, 422, 503))
    @limits.policy(auth="any")
    def audit(caller: Anyone, after: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
              limit: Annotated[int, Query(ge=1, le=10_000)] = 1000) -> list[AuditOut]:
        return [AuditOut(id=a.id, at=a.at, tenant_id=a.tenant_id, actor=a.actor, action=a.action, key_id=a.key_id,
                         subject_id=a.subject_id, template_ids=list(a.template_ids), detail=a.detail)
                for a in service.audit(caller, after, limit)]

    # -- key sets -------------------------------------------------------------------------------------
    @app.post("/v1/keysets", status_code=201, response_model=RegisteredOut,
              responses=_err(*TENANT, *BODY, 400, 409))
    @limits.policy("registration", heavy=True)
    def register(body: KeySetIn, caller: Tenant) -> RegisteredOut:
        public = _b64(body.keys.public, "public key")
        record, ch = service.register(caller, body.backend, json.dumps(body.params.model_dump()), public)
        return RegisteredOut(**_key_set_out(record).model_dump(), challenge=ChallengeOut(
            ciphertext=base64.b64encode(ch.ciphertext).decode(), count=ch.count, nonce=ch.nonce))

    @app.get("/v1/keysets", response_model=list[KeySetOut], responses=_err(*TENANT))
    @limits.policy()
    def key_sets(caller: Tenant) -> list[KeySetOut]:
        return [_key_set_out(r) for r in service.key_sets(caller)]

    @app.get("/v1/keysets/{key_id}", response_model=KeySetOut, responses=_err(*KEYSET))
    @limits.policy()
    def key_set(key_id: KeyId, caller: Tenant) -> KeySetOut:
        return _key_set_out(service.key_set(caller, key_id))

    @app.delete("/v1/keysets/{key_id}", status_code=204, responses=_err(*KEYSET))
    @limits.policy()
    def delete_key_set(key_id: KeyId, caller: Tenant) -> Response:
        service.delete_key_set(caller, key_id)
        return Response(status_code=204)

    @app.post("/v1/keysets/{key_id}/proof", response_model=ProofOut, responses=_err(*KEYSET, *BODY, 403, 409))
    @limits.policy()
    def prove(key_id: KeyId, body: ProofIn, caller: Tenant) -> ProofOut:
        r = service.prove(caller, key_id, body.proof)
        return ProofOut(key_id=r.key_id, status=r.status)  # type: ignore[arg-type]

    @app.put("/v1/keysets/{key_id}/keys/{kind}", status_code=201, response_model=KeySetOut,
             responses=_err(*KEYSET, 400, 409, 413),
             openapi_extra={"requestBody": {"required": True, "content": {"application/octet-stream": {
                 "schema": {"type": "string", "format": "binary"}}}}})
    @limits.policy("key", heavy=True, raw=True)
    async def put_key(key_id: KeyId, kind: KeyKind, request: Request, caller: Tenant) -> KeySetOut:
        data = await request.body()
        return _key_set_out(await run_in_threadpool(service.add_key, caller, key_id, kind, data))

    # -- subjects -------------------------------------------------------------------------------------
    @app.get("/v1/keysets/{key_id}/subjects", response_model=list[SubjectOut], responses=_err(*KEYSET))
    @limits.policy()
    def subjects(key_id: KeyId, caller: Tenant) -> list[SubjectOut]:
        return [_subject_out(s) for s in service.subjects(caller, key_id)]

    @app.post("/v1/keysets/{key_id}/subjects", status_code=201, response_model=SubjectOut, responses=_err(*MATCH))
    @limits.policy("json")
    def create_subject(key_id: KeyId, body: SubjectIn, caller: Tenant) -> SubjectOut:
        probes = [_probe(p) for p in body.probes]
        return _subject_out(service.create_subject(caller, key_id, body.subject, probes))

    @app.post("/v1/keysets/{key_id}/subjects/{subject_id}/templates", status_code=201, response_model=SubjectOut,
              responses=_err(*MATCH))
    @limits.policy("json")
    def add_templates(key_id: KeyId, subject_id: SubjectId, body: TemplatesIn, caller: Tenant) -> SubjectOut:
        probes = [_probe(p) for p in body.probes]
        return _subject_out(service.add_templates(caller, key_id, subject_id, probes))

    @app.delete("/v1/keysets/{key_id}/subjects/{subject_id}", status_code=204, responses=_err(*KEYSET))
    @limits.policy()
    def delete_subject(key_id: KeyId, subject_id: SubjectId, caller: Tenant) -> Response:
        service.delete_subject(caller, key_id, subject_id)
        return Response(status_code=204)

    @app.delete("/v1/keysets/{key_id}/templates/{template_id}", status_code=204, responses=_err(*KEYSET))
    @limits.policy()
    def delete_template(key_id: KeyId, template_id: TemplateId, caller: Tenant) -> Response:
        service.delete_template(caller, key_id, template_id)
        return Response(status_code=204)

    # -- matching -------------------------------------------------------------------------------------
    @app.post("/v1/keysets/{key_id}/infer", response_model=InferOut, responses=_err(*MATCH))
    @limits.policy("json")
    def infer(key_id: KeyId, body: InferIn, caller: Tenant) -> InferOut:
        out = service.infer(caller, key_id, _probe(body.probe))
        return _infer_out(out)

    @app.get("/v1/model/tail", response_model=ModelTailOut, responses=_err(*TENANT, 501))
    @limits.policy()
    def model_tail(caller: Tenant) -> ModelTailOut:
        out = service.model_tail(caller)
        return ModelTailOut(model_id=out["model_id"], resolution=out["resolution"],
                            tail=base64.b64encode(out["tail"]).decode(), tail_digest=out["tail_digest"])

    # -- jobs: inference that outlives one HTTP call ----------------------------------------------------
    @app.post("/v1/keysets/{key_id}/jobs", status_code=202, response_model=JobOut, responses=_err(*MATCH, 429))
    @limits.policy("json")
    def submit_job(key_id: KeyId, body: InferIn, caller: Tenant, response: Response) -> JobOut:
        view = service.submit_infer(caller, key_id, _probe(body.probe))
        response.headers["location"] = f"/v1/jobs/{view.job_id}"
        return _job_out(view)

    @app.get("/v1/jobs", response_model=list[JobOut], responses=_err(*TENANT))
    @limits.policy()
    def jobs(caller: Tenant) -> list[JobOut]:
        return [_job_out(v) for v in service.job_list(caller)]

    @app.get("/v1/jobs/{job_id}", response_model=JobOut, responses=_err(*TENANT, 404, 422))
    @limits.policy()
    def job(job_id: JobId, caller: Tenant) -> JobOut:
        return _job_out(service.job(caller, job_id))

    @app.get("/v1/jobs/{job_id}/result", response_model=InferOut,
             responses=_err(*TENANT, 400, 404, 409, 422, 500, 501))
    @limits.policy()
    def job_result(job_id: JobId, caller: Tenant) -> InferOut:
        out = service.job_result(caller, job_id)
        return _infer_out(out)

    @app.post("/v1/jobs/{job_id}/cancel", status_code=202, response_model=JobOut, responses=_err(*TENANT, 404, 422))
    @limits.policy()
    def cancel_job(job_id: JobId, caller: Tenant) -> JobOut:
        return _job_out(service.cancel_job(caller, job_id))

    @app.delete("/v1/jobs/{job_id}", status_code=204, responses=_err(*TENANT, 404, 422))
    @limits.policy()
    def delete_job(job_id: JobId, caller: Tenant) -> Response:
        service.delete_job(caller, job_id)
        return Response(status_code=204)

    @app.post("/v1/keysets/{key_id}/verify", response_model=VerifyOut, responses=_err(*MATCH))
    @limits.policy("json")
    def verify(key_id: KeyId, body: VerifyIn, caller: Tenant) -> VerifyOut:
        results = service.verify(caller, key_id, body.subject, _probe(body.probe), body.mode)
        return VerifyOut(subject=body.subject, mode=body.mode, results=[base64.b64encode(r).decode() for r in results],
                         threshold=service.threshold if body.mode == "decision" else None)

    @app.post("/v1/keysets/{key_id}/compare", response_model=CompareOut, responses=_err(*MATCH))
    @limits.policy("json")
    def compare(key_id: KeyId, body: CompareIn, caller: Tenant) -> CompareOut:
        chunks = service.compare(caller, key_id, [(_probe(p.a), _probe(p.b)) for p in body.pairs])
        return CompareOut(chunks=[CompareChunk(ciphertext=base64.b64encode(c).decode(), slots=s) for c, s in chunks])

    @app.post("/v1/keysets/{key_id}/identify", response_model=IdentifyOut, responses=_err(*MATCH))
    @limits.policy("json")
    def identify(key_id: KeyId, body: IdentifyIn, caller: Tenant) -> IdentifyOut:
        chunks = service.identify(caller, key_id, _probe(body.probe), body.mode)
        return IdentifyOut(
            mode=body.mode,
            chunks=[IdentifyChunk(ciphertext=base64.b64encode(c).decode(), slots=s, subjects=n) for c, s, n in chunks],
            threshold=service.threshold if body.mode == "decision" else None,
        )

    sizes = {"small": limits.DEFAULT_LIMIT, "admin": limits.ADMIN_LIMIT, "json": max_body_bytes,
             "registration": max_registration_bytes, "key": max_key_bytes}
    app.add_middleware(limits.RouteLimits, routes=app.router.routes, limits=sizes,  # type: ignore[arg-type]
                       slots=service.slots, budget=service.budget, authenticate=auth.from_headers,
                       status_of=error_status)
    return app


__all__ = ["API_VERSION", "ERRORS", "create_app", "error_status"]
