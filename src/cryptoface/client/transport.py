"""How a :class:`~cryptoface.client.client.Client` reaches the matching service: one protocol, two transports.

The transport speaks the service's vocabulary in bytes (serialised ciphertexts and keys); the HTTP transport
(:mod:`cryptoface.client.http`) adds base64, JSON and the API key, the in-process one calls a
:class:`~cryptoface.service.core.MatchService` directly for one tenant (the demo, benchmarks, tests). Nothing
that crosses a transport can decrypt anything: keys are public or evaluation keys, values are ciphertexts, and
the proof of possession is a hash of rounded integers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from cryptoface.errors import CryptoFaceError

LOCAL_TENANT = "local"  # the in-process transport's tenant name when the caller names none (demo, tools)


class ServerError(CryptoFaceError):
    """The service refused or failed a request (HTTP status and error code when it came over HTTP)."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        where = f"server error {status} ({code})" if status else f"server {code}"
        super().__init__(f"{where}: {detail}")
        self.status, self.code, self.detail = status, code, detail


class AuthError(ServerError):
    """The service refused the credential (missing, unknown or revoked API key; wrong admin key)."""


@dataclass(frozen=True)
class ImageProbe:
    """The encrypted, preprocessed face: the engine's input ciphertexts."""

    images: tuple[bytes, ...]
    resolution: int
    packing: str = "monolithic"

    def to_request(self) -> dict[str, Any]:
        return {"images": list(self.images), "resolution": self.resolution, "packing": self.packing}


@dataclass(frozen=True)
class TemplateProbe:
    """An encrypted template: raw (un-normalised), as the engine leaves it, or normalised and encrypted afresh by
    the client (``normalised``: the refresh protocol, :mod:`cryptoface.match.refresh`). Reusable for several
    requests."""

    ciphertext: bytes
    stride: int = 1
    replicas: int = 1
    normalised: bool = False
    # The service's parameters stopped the network before its tail: the ciphertext holds the last block's output,
    # which only the client can finish (Client.refresh, with the served tail whose sha256 is ``tail_digest``);
    # never sent back. ``inferred``: the service made it (an inference result), not this client.
    trunk: bool = False
    model_id: str = ""
    tail_digest: str = ""
    inferred: bool = False

    @classmethod
    def of_result(cls, ciphertext: bytes, out: dict[str, Any]) -> TemplateProbe:
        """The probe an inference result describes (``out``: the service's infer or job-result fields)."""
        return cls(ciphertext, int(out["stride"]), int(out["replicas"]), trunk=bool(out.get("trunk", False)),
                   model_id=str(out.get("model_id", "")), tail_digest=str(out.get("tail_digest", "")), inferred=True)

    def to_request(self) -> dict[str, Any]:
        if self.trunk:
            raise CryptoFaceError("this probe holds the network's last block output, not a template: refresh it "
                                  "on the client (Client.refresh) and send the normalised template")
        return {"ciphertext": self.ciphertext, "stride": self.stride, "replicas": self.replicas,
                "normalised": self.normalised}


Probe = ImageProbe | TemplateProbe


@dataclass(frozen=True)
class ScoreChunk:
    """One 1:N result ciphertext: the score of ``subjects[i]`` is in slot ``slots[i]``."""

    ciphertext: bytes
    slots: tuple[int, ...]
    subjects: tuple[str, ...]


@dataclass(frozen=True)
class PairChunk:
    """Scores of consecutive compared pairs: the i-th pair's cosine is in slot ``slots[i]``."""

    ciphertext: bytes
    slots: tuple[int, ...]


@dataclass(frozen=True)
class Subject:
    """An enrolled subject under one key set: the service's id for it, its name and its templates' ids."""

    subject_id: int
    name: str
    template_ids: tuple[int, ...]


@dataclass(frozen=True)
class KeySetInfo:
    """What the service holds of a key set: ``status`` is "pending" until the proof of possession passes."""

    key_id: str
    backend: str
    status: str
    key_kinds: tuple[str, ...]


@dataclass(frozen=True)
class Challenge:
    """The service's proof-of-possession challenge: ``count`` small integers encrypted under our public key."""

    key_id: str
    ciphertext: bytes
    count: int
    nonce: str  # hex


@dataclass(frozen=True)
class JobInfo:
    """A server-side inference job as its owner sees it (see :mod:`cryptoface.service.jobs`)."""

    job_id: str
    key_id: str
    kind: str
    state: str  # queued | running | done | failed | cancelled
    done: int  # network layers done ...
    total: int  # ... of this many (0 while queued)
    step: str  # the last layer done
    created: float
    started: float | None = None
    ended: float | None = None
    error: str | None = None  # the failure's code and detail ("code: detail")

    @property
    def ended_ok(self) -> bool:
        return self.state == "done"

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0


@runtime_checkable
class Transport(Protocol):
    """The matching service as a client sees it (all keys public, all values encrypted)."""

    def health(self) -> dict[str, Any]: ...

    def key_set(self, key_id: str) -> KeySetInfo | None:
        """The key set if this tenant owns it, else None (another tenant's key set looks absent)."""

    def create_key_set(self, backend: str, params_json: str, public_key: bytes) -> Challenge:
        """Register the public key alone; the key set stays pending until :meth:`prove` succeeds."""

    def prove(self, key_id: str, proof: str) -> str:
        """Answer the challenge with the hash of its rounded integers; returns the new status ("active")."""

    def add_key(self, key_id: str, kind: str, data: bytes) -> None:
        """Upload one evaluation key (create-only: a kind the service holds already is a conflict)."""

    def delete_key_set(self, key_id: str) -> None:
        """Erase the key set with its keys, subjects and templates."""

    def infer(self, key_id: str, probe: ImageProbe) -> TemplateProbe: ...

    def model_tail(self) -> tuple[str, bytes]:
        """(model id, :meth:`~cryptoface.model.tail.ModelTail.to_bytes`) of the served model's tail (untrusted)."""

    def submit_infer(self, key_id: str, probe: ImageProbe) -> JobInfo:
        """:meth:`infer` as a job on the server: accepted at once, collected with :meth:`job_result`."""

    def job(self, job_id: str) -> JobInfo: ...

    def jobs(self) -> list[JobInfo]: ...

    def job_result(self, job_id: str) -> TemplateProbe:
        """The done job's template; the job's own error if it failed; a 409 ServerError if it has not ended."""

    def cancel_job(self, job_id: str) -> JobInfo: ...

    def delete_job(self, job_id: str) -> None: ...

    def create_subject(self, key_id: str, subject: str, probes: list[Probe]) -> Subject: ...

    def add_templates(self, key_id: str, subject_id: int, probes: list[Probe]) -> Subject: ...

    def subjects(self, key_id: str) -> list[Subject]: ...

    def delete_subject(self, key_id: str, subject_id: int) -> None: ...

    def delete_template(self, key_id: str, template_id: int) -> None: ...

    def verify(self, key_id: str, subject: str, probe: Probe, mode: str) -> list[bytes]:
        """One result ciphertext per enrolled template of ``subject``; the value is in slot 0."""

    def identify(self, key_id: str, probe: Probe, mode: str) -> list[ScoreChunk]: ...

    def compare(self, key_id: str, pairs: list[tuple[Probe, Probe]]) -> list[PairChunk]:
        """Encrypted cosines of probe pairs (nothing enrolled), in pair order across the chunks."""

    def close(self) -> None: ...
