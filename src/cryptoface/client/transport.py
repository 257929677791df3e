"""How a :class:`~cryptoface.client.client.Client` reaches the matching service: one protocol, two transports.

The transport speaks the service's vocabulary in bytes (serialised ciphertexts and keys); the HTTP transport
(:mod:`cryptoface.client.http`) adds base64 and JSON, the in-process one calls a
:class:`~cryptoface.service.core.MatchService` directly (the demo, benchmarks, tests). Nothing that crosses a
transport can decrypt anything: keys are public or evaluation keys, values are ciphertexts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from cryptoface.errors import CryptoFaceError


class ServerError(CryptoFaceError):
    """The service refused or failed a request (HTTP status and error code when it came over HTTP)."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        where = f"server error {status} ({code})" if status else f"server {code}"
        super().__init__(f"{where}: {detail}")
        self.status, self.code, self.detail = status, code, detail


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
    """An encrypted raw (un-normalised) template, as the engine leaves it: reusable for several requests."""

    ciphertext: bytes
    stride: int = 1
    replicas: int = 1

    def to_request(self) -> dict[str, Any]:
        return {"ciphertext": self.ciphertext, "stride": self.stride, "replicas": self.replicas}


Probe = ImageProbe | TemplateProbe


@dataclass(frozen=True)
class ScoreChunk:
    """One 1:N result ciphertext: the score of ``subjects[i]`` is in slot ``slots[i]``."""

    ciphertext: bytes
    slots: tuple[int, ...]
    subjects: tuple[str, ...]


@runtime_checkable
class Transport(Protocol):
    """The matching service as a client sees it (all keys public, all values encrypted)."""

    def health(self) -> dict[str, Any]: ...

    def has_key_set(self, key_id: str) -> bool: ...

    def register(self, backend: str, params_json: str, keys: Iterable[tuple[str, bytes]]) -> str:
        """Upload the public key first, then each evaluation key; returns the service's key-set id."""

    def delete_key_set(self, key_id: str) -> None:
        """Withdraw a registration that has no enrolled subject."""

    def infer(self, key_id: str, probe: ImageProbe) -> TemplateProbe: ...

    def enroll(self, key_id: str, subject: str, probes: list[Probe]) -> list[int]: ...

    def verify(self, key_id: str, subject: str, probe: Probe, mode: str) -> list[bytes]:
        """One result ciphertext per enrolled template of ``subject``; the value is in slot 0."""

    def identify(self, key_id: str, probe: Probe, mode: str) -> list[ScoreChunk]: ...

    def subjects(self, key_id: str) -> list[str]: ...

    def close(self) -> None: ...


class InProcessTransport:
    """Calls a :class:`~cryptoface.service.core.MatchService` in this process (no HTTP, same checks)."""

    def __init__(self, service: Any) -> None:
        self.service = service

    def health(self) -> dict[str, Any]:
        return {"status": "ok", **self.service.info()}

    def has_key_set(self, key_id: str) -> bool:
        from cryptoface.store.base import UnknownKeySetError

        try:
            self.service.store.get_key_set(key_id)
        except UnknownKeySetError:
            return False
        return True

    def register(self, backend: str, params_json: str, keys: Iterable[tuple[str, bytes]]) -> str:
        return self.service.register_keys(backend, params_json, dict(keys))

    def delete_key_set(self, key_id: str) -> None:
        self.service.delete_key_set(key_id)

    def infer(self, key_id: str, probe: ImageProbe) -> TemplateProbe:
        out = self.service.infer(key_id, probe.to_request())
        return TemplateProbe(out["ciphertext"], int(out["stride"]), int(out["replicas"]))

    def enroll(self, key_id: str, subject: str, probes: list[Probe]) -> list[int]:
        return self.service.enroll(key_id, subject, [p.to_request() for p in probes])

    def verify(self, key_id: str, subject: str, probe: Probe, mode: str) -> list[bytes]:
        return self.service.verify(key_id, subject, probe.to_request(), mode=mode)

    def identify(self, key_id: str, probe: Probe, mode: str) -> list[ScoreChunk]:
        chunks = self.service.identify(key_id, probe.to_request(), mode=mode)
        return [ScoreChunk(ct, tuple(slots), tuple(names)) for ct, slots, names in chunks]

    def subjects(self, key_id: str) -> list[str]:
        return self.service.store.subjects(key_id)

    def close(self) -> None:
        """The service belongs to the caller; nothing to release here."""
