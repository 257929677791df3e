"""Typed request and response bodies of the HTTP API (what /openapi.json documents).

Request models refuse unknown fields, so a secret key or a typo never passes silently. Names are checked by
:func:`cryptoface.names.validate_name` inside the model, i.e. before any computation, and come back as 422. A
probe is either an encrypted template or encrypted images, never both: two closed schemas (``anyOf``), so the
OpenAPI document says so too. Ciphertexts and keys travel base64-encoded.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from cryptoface.names import InvalidNameError, validate_name
from cryptoface.service.limits import MAX_COMPARE_PAIRS
from cryptoface.store.base import MAX_TEMPLATES_PER_SUBJECT

MAX_IMAGE_CIPHERTEXTS = 256  # Net16 as units: 4 units x a few input ciphertexts, with room to spare
PowerOfTwo = Literal[1, 2, 4, 8, 16, 32, 64, 128]
HEX64 = r"^[0-9a-f]{64}$"


def _name(value: str) -> str:
    try:
        return validate_name(value, "subject")
    except InvalidNameError as exc:  # pydantic turns ValueError into a 422 naming the field
        raise ValueError(str(exc)) from exc


def _tenant_name(value: str) -> str:
    try:
        return validate_name(value, "tenant name")
    except InvalidNameError as exc:
        raise ValueError(str(exc)) from exc


# max_length only bounds the work before validate_name, which applies the real rule (100 characters after NFC)
SubjectName = Annotated[str, Field(min_length=1, max_length=400), AfterValidator(_name)]
TenantName = Annotated[str, Field(min_length=1, max_length=400), AfterValidator(_tenant_name)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- errors -------------------------------------------------------------------------------------------
class ErrorOut(BaseModel):
    """Every 4xx/5xx body: a stable code and a readable detail."""

    error: str
    detail: str


# -- admin ----------------------------------------------------------------------------------------------
class TenantIn(_Strict):
    name: TenantName


class TenantOut(BaseModel):
    tenant_id: str
    name: str
    created_at: float


class ApiKeyOut(BaseModel):
    key_id: str
    tenant_id: str
    created_at: float
    token: str = Field(description="the API key (x-api-key header); shown once, only its hash is stored")


class AuditOut(BaseModel):
    id: int
    at: float
    tenant_id: str | None
    actor: str
    action: str
    key_id: str | None
    subject_id: int | None
    template_ids: list[int]
    detail: str


# -- key sets -------------------------------------------------------------------------------------------
class CkksParams(_Strict):
    log_ring: int = Field(16, ge=10, le=17)
    levels: int = Field(24, ge=1, le=60)
    scale_bits: int = Field(40, ge=20, le=60)
    first_mod_bits: int = Field(60, ge=20, le=61)
    special_mod_bits: int = Field(60, ge=20, le=61)
    key_switch_digits: int = Field(3, ge=1, le=32)  # decision mode needs dnum 14


class PublicKeyIn(_Strict):
    public: str = Field(description="base64 public key (the only key registration takes)")


class KeySetIn(_Strict):
    backend: str = Field(max_length=32, description="CKKS backend name: simulator, desilofhe or openfhe")
    params: CkksParams
    keys: PublicKeyIn = Field(description="only the public key; evaluation keys follow with PUT .../keys/{kind}")


class ChallengeOut(BaseModel):
    ciphertext: str = Field(description="base64 ciphertext of `count` integers in [0, 1000) (slots 0..count-1)")
    count: int
    nonce: str = Field(description="hex; proof = sha256(nonce || 'i0,i1,...' of the rounded integers)")


class KeySetOut(BaseModel):
    key_id: str
    backend: str
    key_kinds: list[str]
    status: Literal["pending", "active"]


class RegisteredOut(KeySetOut):
    challenge: ChallengeOut


class ProofIn(_Strict):
    proof: str = Field(pattern=HEX64, description="sha256 hex of the nonce and the rounded decrypted integers")


class ProofOut(BaseModel):
    key_id: str
    status: Literal["pending", "active"]


# -- probes ---------------------------------------------------------------------------------------------
class TemplateProbe(_Strict):
    """An encrypted template: raw (un-normalised, e.g. what /infer returned) or normalised by the client."""

    ciphertext: str = Field(description="base64 ciphertext of a 256-d template")
    stride: PowerOfTwo = Field(1, description="template layout stride")
    replicas: PowerOfTwo = Field(1, description="template copies, one every 256*stride slots")
    normalised: bool = Field(False, description="true: the client normalised the template and encrypted it in the "
                             "normalised layout (stride slots/256, one copy) at the levels matching needs; the "
                             "server only scores it")


class ImageProbe(_Strict):
    """The encrypted, preprocessed face: the engine's input ciphertexts."""

    images: list[str] = Field(min_length=1, max_length=MAX_IMAGE_CIPHERTEXTS,
                              description="base64 ciphertexts of the encrypted, preprocessed face")
    resolution: int | None = Field(None, ge=1, le=4096, description="model input resolution the client used")
    packing: Literal["monolithic", "units"] = Field(
        "monolithic", description="'monolithic' (the model's plan) or 'units' (Net4-plan groups of <= 4 patches); "
        "it affects this request only")


Probe = TemplateProbe | ImageProbe


# -- subjects -------------------------------------------------------------------------------------------
class SubjectIn(_Strict):
    subject: SubjectName
    probes: list[Probe] = Field(min_length=1, max_length=MAX_TEMPLATES_PER_SUBJECT)


class TemplatesIn(_Strict):
    probes: list[Probe] = Field(min_length=1, max_length=MAX_TEMPLATES_PER_SUBJECT)


class SubjectOut(BaseModel):
    subject_id: int
    subject: str
    template_ids: list[int]


# -- matching -------------------------------------------------------------------------------------------
class InferIn(_Strict):
    probe: ImageProbe


class InferOut(BaseModel):
    ciphertext: str = Field(description="base64 ciphertext of the raw (un-normalised) template, or with `trunk` "
                            "of the last block's output")
    stride: int
    replicas: int
    trunk: bool = Field(False, description="true: the key set's parameters stop the network before its tail; the "
                        "client decrypts the last block's output and finishes it with GET /v1/model/tail")
    model_id: str = Field("", description="the model that computed it")
    tail_digest: str = Field("", description="with `trunk`: the digest of the tail that finishes it "
                             "(GET /v1/model/tail; sha256 of its content)")


class ModelTailOut(BaseModel):
    model_id: str
    resolution: int
    tail: str = Field(description="base64 .npz: per patch the pool quadratic's b and c, the head block, and the "
                      "bias (cryptoface.model.tail.ModelTail)")
    tail_digest: str = Field(description="hex sha256 of the tail's content (cryptoface.model.tail.ModelTail.digest)")


class JobProgress(BaseModel):
    done: int = Field(description="steps (network layers) done")
    total: int = Field(description="steps in all (0 while queued)")
    step: str = Field(description="name of the last step done")


class JobOut(BaseModel):
    """An inference job: poll it, cancel it, collect its result (GET /v1/jobs/{job_id}/result) once done."""

    job_id: str
    key_id: str
    kind: str
    state: str = Field(description="queued | running | done | failed | cancelled")
    progress: JobProgress
    created: float = Field(description="Unix time")
    started: float | None
    ended: float | None
    error: ErrorOut | None = Field(description="why it failed (the status code is in /result's answer)")


class VerifyIn(_Strict):
    subject: SubjectName
    probe: Probe
    mode: Literal["score", "decision"] = "score"


class VerifyOut(BaseModel):
    subject: str
    mode: str
    results: list[str] = Field(description="base64 ciphertexts, one per enrolled template; the value is in slot 0")
    slot: int = 0
    threshold: float | None = Field(description="the server's tau in decision mode; the client decides with its own")


class PairIn(_Strict):
    a: Probe
    b: Probe


class CompareIn(_Strict):
    pairs: list[PairIn] = Field(min_length=1, max_length=MAX_COMPARE_PAIRS, description="scored in order; nothing "
                                "is enrolled (the body limit bounds pairs of encrypted images first)")


class CompareChunk(BaseModel):
    ciphertext: str = Field(description="base64 ciphertext holding the cosines of consecutive pairs")
    slots: list[int] = Field(description="the slot of each of those pairs' cosine, in pair order")


class CompareOut(BaseModel):
    chunks: list[CompareChunk]


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
