"""The one client: a key set plus a transport; encrypts, asks the service, decrypts and decides.

Every command-line verb, the demo and the benchmarks go through :class:`Client`; only the transport differs
(HTTP to a server, or a :class:`~cryptoface.service.core.MatchService` in this process). The decision is the
client's: the threshold comes from the client's configuration (the model card's default), never from the
server, and a decrypted cosine outside [-1 - eps, 1 + eps] is reported as tampering, not as a decision.
Decrypted values never go back to the service (CKKS is not IND-CPA-D secure).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cryptoface.client.keys import ClientKeys
from cryptoface.client.transport import (
    ImageProbe,
    InProcessTransport,
    Probe,
    ScoreChunk,
    ServerError,
    TemplateProbe,
    Transport,
)
from cryptoface.errors import CryptoFaceError

MODES = ("score", "decision")
# A decrypted cosine may exceed 1 by CKKS noise and the encrypted 1/sqrt's error (measured max |enc - clear|
# 1.04e-4 on LFW pairs); anything beyond this margin did not come from two normalised templates.
COSINE_MARGIN = 1e-2

PhotoOrProbe = Probe | str | os.PathLike[str]


class TamperingError(CryptoFaceError):
    """A decrypted result cannot have come from honest matching (e.g. a cosine far outside [-1, 1])."""


@dataclass(frozen=True)
class VerifyResult:
    subject: str
    accepted: bool
    mode: str
    values: list[float]  # one per enrolled template: cosine (score mode) or F(cos - tau) (decision mode)
    threshold: float | None  # the client's tau (score mode); None in decision mode

    @property
    def score(self) -> float | None:
        return max(self.values) if self.mode == "score" else None


@dataclass(frozen=True)
class IdentifyResult:
    subject: str | None  # best subject above threshold, None = unknown
    score: float | None
    mode: str
    scores: dict[str, float] = field(default_factory=dict)  # best value per subject
    threshold: float | None = None


def default_threshold() -> float:
    """tau of the bundled model's card (the client's default), else the library default."""
    from cryptoface.assets import default_model_path
    from cryptoface.errors import ModelFileError
    from cryptoface.match.threshold import threshold_from_model_file

    try:
        return threshold_from_model_file(default_model_path())
    except ModelFileError:
        return threshold_from_model_file(None)


class Client:
    """Encrypt, enrol, verify, identify under one key set, through one transport."""

    def __init__(self, keys: ClientKeys, transport: Transport, *, threshold: float | None = None) -> None:
        self.keys = keys
        self.transport = transport
        self.threshold = default_threshold() if threshold is None else float(threshold)
        if not -1.0 < self.threshold < 1.0:
            raise CryptoFaceError(f"threshold {self.threshold} is not a cosine in (-1, 1)")

    @classmethod
    def connect(cls, server: str, home: str | os.PathLike[str] | None = None, **kw: Any) -> Client:
        """The saved key set in ``home`` talking HTTP to ``server``."""
        from cryptoface.client.http import HTTPTransport

        return cls(ClientKeys.load(home), HTTPTransport(server), **kw)

    @classmethod
    def in_process(cls, keys: ClientKeys, service: Any, **kw: Any) -> Client:
        """``keys`` calling ``service`` (a MatchService) directly."""
        return cls(keys, InProcessTransport(service), **kw)

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def key_id(self) -> str:
        return self.keys.key_id

    # -- keys -----------------------------------------------------------------------------------
    def register(self) -> bool:
        """Upload the public and evaluation keys unless the service has them; True when uploaded now."""
        if self.transport.has_key_set(self.key_id):
            return False
        got = self.transport.register(self.keys.backend_name, self.keys.params_json, self.keys.evaluation_keys())
        if got != self.key_id:
            raise ServerError(0, "key_id_mismatch", f"the service registered key set {got}, the client has "
                              f"{self.key_id}")
        return True

    # -- probes ---------------------------------------------------------------------------------
    def encrypt_photo(self, photo: str | os.PathLike[str], *, packing: str = "monolithic") -> ImageProbe:
        """Align, preprocess and encrypt a photo for the service's encrypted inference."""
        from cryptoface.client.photos import encrypt_photo

        resolution = self._resolution()
        cts = encrypt_photo(self.keys, Path(photo), resolution, packing)
        return ImageProbe(tuple(self.keys.backend.serialize(c) for c in cts), resolution, packing)

    def template_probe(self, ciphertext: Any) -> TemplateProbe:
        """A raw template ciphertext made on the client (tools, tests) as a probe in the key set's layout."""
        return TemplateProbe(self.keys.backend.serialize(ciphertext), self.keys.stride)

    def infer(self, probe: PhotoOrProbe) -> TemplateProbe:
        """Run the encrypted inference once and keep its encrypted template for several requests."""
        probe = self._probe(probe)
        if isinstance(probe, TemplateProbe):
            return probe
        return self.transport.infer(self.key_id, probe)

    def _probe(self, probe: PhotoOrProbe) -> Probe:
        return probe if isinstance(probe, ImageProbe | TemplateProbe) else self.encrypt_photo(probe)

    def _resolution(self) -> int:
        if self.keys.resolution is not None:
            return int(self.keys.resolution)
        info = self.transport.health()
        if info.get("model_resolution") is None:
            raise CryptoFaceError("the key set names no model resolution and the server has no model")
        return int(info["model_resolution"])

    # -- requests -------------------------------------------------------------------------------
    def enroll(self, subject: str, photos: Sequence[PhotoOrProbe]) -> list[int]:
        """Enrol ``subject`` from photos or probes. Photos are encrypted before anything is registered, and a
        key set registered by this call is withdrawn again if the enrolment fails."""
        if not photos:
            raise CryptoFaceError("nothing to enrol: give at least one photo")
        probes = [self._probe(p) for p in photos]
        registered = self.register()
        try:
            return self.transport.enroll(self.key_id, subject, probes)
        except BaseException:
            if registered:
                with contextlib.suppress(CryptoFaceError):  # the enrolment's own error is the one to report
                    self.transport.delete_key_set(self.key_id)
            raise

    def verify(self, subject: str, probe: PhotoOrProbe, mode: str = "score") -> VerifyResult:
        """1:1: is the face ``subject``? Accepts when the best template's cosine exceeds the client's tau."""
        _check_mode(mode)
        probe = self._probe(probe)
        values = [self._value(c, 0, mode) for c in self.transport.verify(self.key_id, subject, probe, mode)]
        if not values:
            raise ServerError(0, "empty_result", f"the service returned no score for {subject!r}")
        return VerifyResult(subject, self.decide(max(values), mode), mode, values,
                            self.threshold if mode == "score" else None)

    def identify(self, probe: PhotoOrProbe, mode: str = "score") -> IdentifyResult:
        """1:N: the best enrolled subject above tau, or None."""
        _check_mode(mode)
        probe = self._probe(probe)
        best = self._best_per_subject(self.transport.identify(self.key_id, probe, mode), mode)
        tau = self.threshold if mode == "score" else None
        if not best:
            return IdentifyResult(None, None, mode, best, tau)
        name, value = max(best.items(), key=lambda kv: kv[1])
        return IdentifyResult(name if self.decide(value, mode) else None, value, mode, best, tau)

    def subjects(self) -> list[str]:
        return self.transport.subjects(self.key_id)

    # -- decisions ------------------------------------------------------------------------------
    def decide(self, value: float, mode: str = "score") -> bool:
        """Accept a decrypted value: cosine > tau (score mode), or a positive sign (decision mode)."""
        return value > (self.threshold if mode == "score" else 0.0)

    def decrypt_slots(self, ciphertext: bytes) -> np.ndarray:
        be = self.keys.backend
        return be.decrypt(be.deserialize(ciphertext))

    def _value(self, ciphertext: bytes, slot: int, mode: str) -> float:
        return checked_value(float(self.decrypt_slots(ciphertext)[slot]), mode)

    def _best_per_subject(self, chunks: Sequence[ScoreChunk], mode: str) -> dict[str, float]:
        """Decrypt 1:N chunks and keep each subject's best value."""
        best: dict[str, float] = {}
        for chunk in chunks:
            slots = self.decrypt_slots(chunk.ciphertext)
            for slot, name in zip(chunk.slots, chunk.subjects, strict=True):
                best[name] = max(best.get(name, -np.inf), checked_value(float(slots[slot]), mode))
        return best


def checked_value(value: float, mode: str) -> float:
    """A decrypted score, refused when no honest computation could have produced it."""
    if not np.isfinite(value) or (mode == "score" and abs(value) > 1.0 + COSINE_MARGIN):
        raise TamperingError(f"decrypted score {value:.6g} is not a cosine: the result was not computed from two "
                             "normalised templates (a tampered template or a misbehaving server)")
    return value


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise CryptoFaceError(f"mode must be one of {MODES}, got {mode!r}")
