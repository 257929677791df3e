"""FastAPI app of the matching server: typed JSON API, OpenAPI at /docs, body-size limits, clear 4xx errors.

Ciphertexts and keys travel base64-encoded inside JSON (``/v1/keysets`` and the matching routes) or as a raw
``application/octet-stream`` body for single large evaluation keys (``PUT /v1/keysets/{id}/keys/{kind}``).
The server never receives, loads or stores a secret key.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from cryptoface.backends import available_backends
from cryptoface.errors import BackendUnavailableError, CiphertextError, MissingKeyError, ParameterError
from cryptoface.match.threshold import DEFAULT_THRESHOLD
from cryptoface.service.core import EngineUnavailableError, MatchService, ServiceInputError
from cryptoface.store.base import (
    ConflictError,
    StoreError,
    TemplateStore,
    UnknownKeySetError,
    UnknownSubjectError,
)

API_VERSION = "1"
DEFAULT_MAX_BODY = 256 * 1024 * 1024  # JSON requests (a few base64 ciphertexts)
DEFAULT_MAX_KEY_BODY = 1024 * 1024 * 1024  # one raw evaluation key (desilo top-level rotation key: 131 MB)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CkksParams(_Strict):
    log_ring: int = Field(16, ge=10, le=17)
    levels: int = Field(24, ge=1, le=60)
    scale_bits: int = Field(40, ge=20, le=60)
    first_mod_bits: int = Field(60, ge=20, le=61)
    special_mod_bits: int = Field(60, ge=20, le=61)
    key_switch_digits: int = Field(3, ge=1, le=32)  # decision mode needs dnum 14


class KeySetIn(_Strict):
    backend: str = Field(description="CKKS backend name: simulator, desilofhe or openfhe")
    params: CkksParams
    keys: dict[str, str] = Field(description="base64 public + evaluation keys by kind; never a secret key")


class KeySetOut(BaseModel):
    key_id: str
    backend: str
    key_kinds: list[str]


class Probe(_Strict):
    """Either an encrypted template (engine layout, un-normalised) or the encrypted image patches."""

    ciphertext: str | None = Field(None, description="base64 ciphertext of a raw 256-d template (tests, tools)")
    stride: int = Field(1, ge=1, le=128, description="template layout stride (power of two)")
    replicas: int = Field(1, ge=1, le=128, description="template copies, one every 256*stride slots (power of two)")
    images: list[str] | None = Field(None, description="base64 ciphertexts of the encrypted, preprocessed face")
    resolution: int | None = Field(None, description="model input resolution the client preprocessed for")
    packing: str | None = Field(None, description="image packing: 'monolithic' (default, the model's plan) or "
                                "'units' (Net4-plan groups of <= 4 patches, for patch-parallel servers)")


class EnrollIn(_Strict):
    probes: list[Probe] = Field(min_length=1, max_length=16)


class EnrollOut(BaseModel):
    subject: str
    template_ids: list[int]


class InferIn(_Strict):
    probe: Probe


class InferOut(BaseModel):
    ciphertext: str = Field(description="base64 ciphertext of the raw (un-normalised) template")
    stride: int
    replicas: int


class VerifyIn(_Strict):
    subject: str
    probe: Probe
    mode: Literal["score", "decision"] = "score"


class VerifyOut(BaseModel):
    subject: str
    mode: str
    results: list[str] = Field(description="base64 ciphertexts, one per enrolled template; the value is in slot 0")
    slot: int = 0
    threshold: float | None = Field(description="tau (score mode only; in decision mode the client sees a sign)")


class IdentifyIn(_Strict):
    probe: Probe
    mode: Literal["score", "decision"] = "score"


class IdentifyChunk(BaseModel):
    ciphertext: str
    slots: list[int]
    subjects: list[str]


class IdentifyOut(BaseModel):
    mode: str
    chunks: list[IdentifyChunk]
    threshold: float | None


class ErrorOut(BaseModel):
    error: str
    detail: str


def _b64(data: str, what: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ServiceInputError(f"{what} is not valid base64") from exc


def _probe_dict(p: Probe) -> dict[str, Any]:
    if (p.ciphertext is None) == (p.images is None):
        raise ServiceInputError("a probe carries either 'ciphertext' (a template) or 'images', not both or neither")
    for name, value in (("stride", p.stride), ("replicas", p.replicas)):
        if value & (value - 1):
            raise ServiceInputError(f"{name} {value} is not a power of two")
    if p.images is not None:
        return {"images": [_b64(x, "image ciphertext") for x in p.images], "resolution": p.resolution,
                "packing": p.packing}
    return {"ciphertext": _b64(p.ciphertext or "", "template ciphertext"), "stride": p.stride, "replicas": p.replicas}


class _BodyLimit:
    """ASGI middleware: 413 for bodies over the limit (Content-Length or counted while streaming)."""

    def __init__(self, app: Any, max_body: int, max_key_body: int) -> None:
        self.app, self.max_body, self.max_key_body = app, max_body, max_key_body

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_key_body if "/keys/" in scope.get("path", "") else self.max_body
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await _too_large(send, limit)
                return
        seen = 0

        async def limited_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _BodyTooLarge(limit)
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _BodyTooLarge:
            await _too_large(send, limit)


class _BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(limit)


async def _too_large(send: Any, limit: int) -> None:
    body = json.dumps({"error": "payload_too_large", "detail": f"request body exceeds {limit} bytes"}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


_ERRORS: list[tuple[type[BaseException], int, str]] = [
    (UnknownKeySetError, 404, "unknown_key_set"),
    (UnknownSubjectError, 404, "unknown_subject"),
    (ConflictError, 409, "conflict"),
    (EngineUnavailableError, 501, "engine_unavailable"),
    (CiphertextError, 400, "bad_ciphertext"),
    (ParameterError, 400, "bad_parameters"),
    (MissingKeyError, 400, "missing_key"),
    (BackendUnavailableError, 400, "backend_unavailable"),
    (ServiceInputError, 400, "bad_request"),
    (StoreError, 400, "bad_request"),
]


def create_app(
    store: TemplateStore,
    *,
    model: Any = None,
    model_id: str = "none",
    threshold: float = DEFAULT_THRESHOLD,
    max_body_bytes: int = DEFAULT_MAX_BODY,
    max_key_bytes: int = DEFAULT_MAX_KEY_BODY,
    executor: Any = None,
) -> FastAPI:
    """The HTTP app over ``store``. ``model`` (a FusedModel) enables enrolment from encrypted images;
    ``executor`` (e.g. a RayExecutor) runs inference as patch-parallel units and shards 1:N over its workers."""
    service = MatchService(store, model=model, model_id=model_id, threshold=threshold, executor=executor)
    app = FastAPI(
        title="CryptoFace matching server",
        version=API_VERSION,
        description="Encrypted face templates: the server never holds a secret key, a face, a template or a score "
        "in the clear.",
    )
    app.state.service = service

    for exc_type, status, code in _ERRORS:

        def handler(request: Request, exc: BaseException, status: int = status, code: str = code) -> JSONResponse:
            return JSONResponse({"error": code, "detail": str(exc)}, status_code=status)

        app.add_exception_handler(exc_type, handler)

    err = {400: {"model": ErrorOut}, 404: {"model": ErrorOut}, 413: {"model": ErrorOut}}

    @app.get("/v1/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "api": API_VERSION, "backends": available_backends(), **service.info()}

    @app.post("/v1/keysets", response_model=KeySetOut, responses=err)
    def register(body: KeySetIn) -> KeySetOut:
        keys = {k: _b64(v, f"key {k!r}") for k, v in body.keys.items()}
        params_json = json.dumps(body.params.model_dump(), sort_keys=True)
        key_id = service.register_keys(body.backend, params_json, keys)
        rec = store.get_key_set(key_id)
        return KeySetOut(key_id=key_id, backend=rec.backend, key_kinds=list(rec.key_kinds))

    @app.get("/v1/keysets/{key_id}", response_model=KeySetOut, responses=err)
    def key_set(key_id: str) -> KeySetOut:
        rec = store.get_key_set(key_id)
        return KeySetOut(key_id=key_id, backend=rec.backend, key_kinds=list(rec.key_kinds))

    @app.delete("/v1/keysets/{key_id}", status_code=204, responses={**err, 409: {"model": ErrorOut}})
    def delete_key_set(key_id: str) -> None:
        service.delete_key_set(key_id)

    @app.put("/v1/keysets/{key_id}/keys/{kind}", response_model=KeySetOut, responses=err)
    async def put_key(key_id: str, kind: str, request: Request) -> KeySetOut:
        data = await request.body()
        if not data:
            raise ServiceInputError("empty key body")
        await run_in_threadpool(service.add_key, key_id, kind, data)
        rec = store.get_key_set(key_id)
        return KeySetOut(key_id=key_id, backend=rec.backend, key_kinds=list(rec.key_kinds))

    @app.get("/v1/keysets/{key_id}/subjects", responses=err)
    def subjects(key_id: str) -> list[str]:
        return store.subjects(key_id)

    @app.post("/v1/keysets/{key_id}/subjects/{subject}/templates", response_model=EnrollOut, responses=err)
    def enroll(key_id: str, subject: str, body: EnrollIn) -> EnrollOut:
        ids = service.enroll(key_id, subject, [_probe_dict(p) for p in body.probes])
        return EnrollOut(subject=subject, template_ids=ids)

    @app.post("/v1/keysets/{key_id}/infer", response_model=InferOut, responses={**err, 501: {"model": ErrorOut}})
    def infer(key_id: str, body: InferIn) -> InferOut:
        out = service.infer(key_id, _probe_dict(body.probe))
        return InferOut(ciphertext=base64.b64encode(out["ciphertext"]).decode(), stride=out["stride"],
                        replicas=out["replicas"])

    @app.post("/v1/keysets/{key_id}/verify", response_model=VerifyOut, responses=err)
    def verify(key_id: str, body: VerifyIn) -> VerifyOut:
        results = service.verify(key_id, body.subject, _probe_dict(body.probe), body.mode)
        return VerifyOut(
            subject=body.subject,
            mode=body.mode,
            results=[base64.b64encode(r).decode() for r in results],
            threshold=service.threshold if body.mode == "score" else None,
        )

    @app.post("/v1/keysets/{key_id}/identify", response_model=IdentifyOut, responses=err)
    def identify(key_id: str, body: IdentifyIn) -> IdentifyOut:
        chunks = service.identify(key_id, _probe_dict(body.probe), body.mode)
        return IdentifyOut(
            mode=body.mode,
            chunks=[IdentifyChunk(ciphertext=base64.b64encode(c).decode(), slots=s, subjects=n) for c, s, n in chunks],
            threshold=service.threshold if body.mode == "score" else None,
        )

    app.add_middleware(_BodyLimit, max_body=max_body_bytes, max_key_body=max_key_bytes)  # type: ignore[arg-type]
    return app
