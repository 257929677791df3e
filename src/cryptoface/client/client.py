"""The one client: a key set plus a transport; encrypts, asks the service, decrypts and decides.

Every command-line verb, the demo and the benchmarks go through :class:`Client`; only the transport differs
(HTTP to a server as one tenant, or a :class:`~cryptoface.service.core.MatchService` in this process). In the
default ``refresh`` protocol (:data:`cryptoface.params.PROTOCOLS`) the client turns the server's raw template into
a fresh normalised one before anything is enrolled or matched (:meth:`Client.refresh`); ``one-round`` sends the
encrypted photo and reads scores back, the server normalising. The decision is the client's: the threshold comes
from the client's configuration (the model card's default), never from the server, and a decrypted cosine outside
[-1 - eps, 1 + eps] is reported as tampering, not as a decision. Decrypted values never go back to the service
(CKKS is not IND-CPA-D secure): a refreshed template is a new encryption, and registration proves possession of
the secret key with a hash of *rounded* integers only. Subject names are checked here, before any computation.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cryptoface.backends import read_untrusted
from cryptoface.client.keys import ClientKeys
from cryptoface.client.transport import (
    Challenge,
    ImageProbe,
    JobInfo,
    Probe,
    ScoreChunk,
    ServerError,
    Subject,
    TemplateProbe,
    Transport,
)
from cryptoface.engine.layout import TemplateLayout
from cryptoface.errors import CryptoFaceError, ParameterError
from cryptoface.match.layout import normalised_layout
from cryptoface.match.refresh import refreshed_slots
from cryptoface.names import validate_name
from cryptoface.params import DEFAULT_PROTOCOL, LEVELS, PROTOCOLS
from cryptoface.store.base import MAX_TEMPLATES_PER_SUBJECT

MODES = ("score", "decision")
# A decrypted cosine may exceed 1 by CKKS noise and the encrypted 1/sqrt's error (measured max |enc - clear|
# 1.04e-4 on LFW pairs); anything beyond this margin did not come from two normalised templates.
COSINE_MARGIN = 1e-2

PhotoOrProbe = Probe | str | os.PathLike[str]


# An honest challenge decrypts to integers give or take CKKS noise (~1e-6); a value this far from every integer
# was not an encrypted integer, and rounding it would tell the server which way our noise went.
CHALLENGE_TOLERANCE = 0.25
MAX_CHALLENGE_COUNT = 4096
MAX_CHALLENGE_VALUE = 2.0**20


class TamperingError(CryptoFaceError):
    """A decrypted result cannot have come from honest matching (e.g. a cosine far outside [-1, 1])."""


class SubjectExistsError(CryptoFaceError):
    """Creating a subject whose name is enrolled already under this key set (add templates instead)."""


class UnknownSubjectError(CryptoFaceError):
    """No subject of that name is enrolled under this key set."""


class JobCancelledError(CryptoFaceError):
    """The server's inference job was cancelled (by this client, another one of the tenant's, or a shutdown)."""


Progress = Callable[[JobInfo], None]
JOB_POLL_SECONDS = 1.0  # how often a waiting client asks the server how its inference job stands
TRANSIENT_STATUSES = (0, 502, 503, 504)  # unreachable, or a proxy's answer: poll again
MAX_POLL_MISSES = 5


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


@dataclass(frozen=True)
class CompareResult:
    """One compared pair: the decrypted cosine and the client's decision (same person when score > tau)."""

    score: float
    same: bool
    threshold: float


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

    def __init__(self, keys: ClientKeys, transport: Transport, *, threshold: float | None = None,
                 protocol: str = DEFAULT_PROTOCOL, progress: Progress | None = None,
                 poll_seconds: float = JOB_POLL_SECONDS) -> None:
        """``protocol``: "refresh" (the client normalises each template and encrypts it afresh) or "one-round"
        (the server normalises; needs a key set with matching's levels, ``keygen --protocol one-round``).
        ``progress(job)`` is called while the server's inference job runs (a progress bar, a web page)."""
        self.keys = keys
        self.transport = transport
        self.progress = progress
        self.poll_seconds = float(poll_seconds)
        self.threshold = default_threshold() if threshold is None else float(threshold)
        if not -1.0 < self.threshold < 1.0:
            raise CryptoFaceError(f"threshold {self.threshold} is not a cosine in (-1, 1)")
        if protocol not in PROTOCOLS:
            raise CryptoFaceError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        self.protocol = protocol

    @classmethod
    def connect(
        cls,
        server: str | None = None,
        home: str | os.PathLike[str] | None = None,
        *,
        api_key: str | None = None,
        ca_cert: str | os.PathLike[str] | None = None,
        insecure_http: bool = False,
        **kw: Any,
    ) -> Client:
        """The saved key set in ``home`` talking HTTP(S) to a server; unset settings come from the environment,
        then ``<home>/server.json`` (:func:`cryptoface.client.settings.resolve_settings`)."""
        from cryptoface.client.http import HTTPTransport
        from cryptoface.client.settings import resolve_settings

        settings = resolve_settings(server, api_key, ca_cert, home)
        keys = ClientKeys.load(home)
        transport = HTTPTransport(settings.server, api_key=settings.api_key, ca_cert=settings.ca_cert,
                                  insecure_http=insecure_http)
        return cls(keys, transport, **kw)

    @classmethod
    def in_process(cls, keys: ClientKeys, service: Any, *, tenant_id: str | None = None, **kw: Any) -> Client:
        """``keys`` calling ``service`` (a MatchService) directly, as ``tenant_id`` (default: a local tenant)."""
        from cryptoface.client.inprocess import InProcessTransport

        return cls(keys, InProcessTransport(service, tenant_id), **kw)

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
        """Make sure the service holds this key set, proven and complete; True when it was created now.

        New: the public key goes first, the service's challenge is answered (:func:`prove_possession`), then
        each evaluation key is uploaded. A pending key set (an interrupted registration: its challenge is gone) is
        erased and registered again; an active one only gets the kinds it lacks. A registration created here is
        withdrawn if any later step fails."""
        info = self.transport.key_set(self.key_id)
        if info is not None and info.status == "pending":
            self.transport.delete_key_set(self.key_id)
            info = None
        have = set() if info is None else set(info.key_kinds) | {"public"}
        if info is not None and self.keys.key_kinds and not set(self.keys.key_kinds) - have:
            return False  # complete: nothing is read or exported again
        keys = self.keys.evaluation_keys(exclude=have)
        created = False
        try:
            if info is None:
                kind, public = next(keys)
                if kind != "public":  # pragma: no cover - evaluation_keys yields the public key first
                    raise CryptoFaceError("the key home's public key is missing")
                challenge = self.transport.create_key_set(self.keys.backend_name, self.keys.params_json, public)
                created = True
                if challenge.key_id != self.key_id:
                    raise ServerError(0, "key_id_mismatch", f"the service registered key set {challenge.key_id}, "
                                      f"the client has {self.key_id}")
                self.transport.prove(self.key_id, prove_possession(self.keys.backend, challenge))
            for kind, data in keys:
                self.transport.add_key(self.key_id, kind, data)
        except BaseException:
            if created:
                with contextlib.suppress(CryptoFaceError):  # the registration's own error is the one to report
                    self.transport.delete_key_set(self.key_id)
            raise
        return created

    def delete_key_set(self, key_id: str | None = None) -> None:
        """Erase a key set (default: this one) on the service with everything enrolled under it. The local keys
        stay: registering them again starts from an empty key set."""
        self.transport.delete_key_set(key_id or self.key_id)

    # -- probes ---------------------------------------------------------------------------------
    def encrypt_photo(self, photo: str | os.PathLike[str] | np.ndarray, *, packing: str = "monolithic") -> ImageProbe:
        """Align, preprocess and encrypt a photo (a file, or an RGB array: a photo or an aligned 112x112 crop) for
        the service's encrypted inference."""
        from cryptoface.client.photos import encrypt_photo

        resolution = self._resolution()
        cts = encrypt_photo(self.keys, photo if isinstance(photo, np.ndarray) else Path(photo), resolution, packing)
        return ImageProbe(tuple(self.keys.backend.serialize(c) for c in cts), resolution, packing)

    def template_probe(self, ciphertext: Any) -> TemplateProbe:
        """A raw template ciphertext made on the client (tools, tests) as a probe in the key set's layout."""
        return TemplateProbe(self.keys.backend.serialize(ciphertext), self.keys.stride)

    def infer(self, probe: PhotoOrProbe) -> TemplateProbe:
        """Run the encrypted inference once and keep its encrypted template for several requests.

        It runs as a job on the server (:meth:`wait_job`): no HTTP call lasts minutes, :attr:`progress` sees each
        network layer, and an interrupt here cancels the server's work."""
        probe = self._probe(probe)
        if isinstance(probe, TemplateProbe):
            return probe
        job = self.transport.submit_infer(self.key_id, probe)
        del probe  # the image ciphertexts are on the server now
        return self.wait_job(job.job_id)

    def wait_job(self, job_id: str) -> TemplateProbe:
        """Wait for an inference job (reporting to :attr:`progress`), collect its template and forget the job.

        The job is cancelled if the wait is interrupted (Ctrl-C, an error in the progress callback);
        JobCancelledError if it was cancelled elsewhere; the job's own error if it failed."""
        wait = min(0.05, self.poll_seconds)  # short jobs (the simulator, small rings) end within a few polls
        misses = 0
        try:
            while True:
                try:
                    job = self.transport.job(job_id)
                    misses = 0
                except ServerError as exc:  # a dropped connection or a proxy's hiccup is no reason to give up
                    misses += 1
                    if exc.status not in TRANSIENT_STATUSES or misses > MAX_POLL_MISSES:
                        raise
                    time.sleep(self.poll_seconds)
                    continue
                if self.progress is not None:
                    self.progress(job)
                if job.state == "cancelled":
                    raise JobCancelledError(f"the server's inference job {job_id} was cancelled")
                if job.state in ("done", "failed"):
                    result = self.transport.job_result(job_id)  # raises the job's error if it failed
                    break
                if job.state not in ("queued", "running"):
                    raise ServerError(0, "bad_job_state", f"the server reports job state {job.state!r}")
                time.sleep(wait)
                wait = min(2 * wait, self.poll_seconds)
        except BaseException:
            with contextlib.suppress(CryptoFaceError):
                self.transport.delete_job(job_id)  # cancels it if it is still running
            raise
        with contextlib.suppress(CryptoFaceError):
            self.transport.delete_job(job_id)
        return result

    def cancel_job(self, job_id: str) -> JobInfo:
        """Ask the server to stop an inference job (it stops at its next network layer)."""
        return self.transport.cancel_job(job_id)

    def refresh(self, probe: PhotoOrProbe, mode: str = "score") -> TemplateProbe:
        """The probe's template normalised here and encrypted afresh at the levels ``mode`` needs.

        A photo or image probe costs one encrypted inference on the service (which returns the raw template); a
        raw template probe is decrypted directly; a normalised one is returned as it is. The decrypted template
        stays in this process: only a new encryption of its normalised copy is sent."""
        _check_mode(mode)
        template = self.infer(probe)
        if template.normalised:
            return template
        be = self.keys.backend
        level = LEVELS.fresh_template(mode)
        if be.params.levels < level:
            raise CryptoFaceError(f"a fresh {mode}-mode template needs {level} levels; this key set has "
                                  f"{be.params.levels}")
        try:
            layout = TemplateLayout(template.stride, template.replicas)
            slots = refreshed_slots(be.decrypt(read_untrusted(be, template.ciphertext)), layout)
        except (ParameterError, ValueError) as exc:
            raise TamperingError(f"the service's template cannot be refreshed: {exc}") from exc
        fresh = be.encrypt(slots, level)
        return TemplateProbe(be.serialize(fresh), normalised_layout(be.slots).stride, 1, normalised=True)

    def _probe(self, probe: PhotoOrProbe) -> Probe:
        return probe if isinstance(probe, ImageProbe | TemplateProbe) else self.encrypt_photo(probe)

    def _match_probe(self, probe: PhotoOrProbe, mode: str = "score") -> Probe:
        """What a matching request sends under this client's protocol."""
        return self.refresh(probe, mode) if self.protocol == "refresh" else self._probe(probe)

    def _resolution(self) -> int:
        if self.keys.resolution is not None:
            return int(self.keys.resolution)
        info = self.transport.health()
        if info.get("model_resolution") is None:
            raise CryptoFaceError("the key set names no model resolution and the server has no model")
        return int(info["model_resolution"])

    # -- subjects -------------------------------------------------------------------------------
    def enroll(self, subject: str, photos: Sequence[PhotoOrProbe], *, add: bool = False,
               decision_ready: bool = False) -> Subject:
        """Create ``subject`` from photos or probes, or with ``add`` add templates to an enrolled one.

        The name is checked and looked up before any photo is encrypted; photos are encrypted before anything is
        registered, and a key set registered by this call is withdrawn again if the enrolment fails. Refresh
        protocol: templates are stored with the levels of the cosine and the dense 1:N mask (2), or with
        ``decision_ready`` with those of the cosine and the sign (10, larger); one-round ignores it."""
        name = validate_name(subject, "subject name")
        if not photos:
            raise CryptoFaceError("nothing to enrol: give at least one photo")
        existing = self.find_subject(name)
        if add and existing is None:
            raise UnknownSubjectError(f"no subject {name!r} is enrolled under key set {self.key_id[:12]}; enrol it "
                                      "without --add first")
        if not add and existing is not None:
            raise _exists(name)
        held = 0 if existing is None else len(existing.template_ids)
        if held + len(photos) > MAX_TEMPLATES_PER_SUBJECT:
            raise CryptoFaceError(f"a subject holds at most {MAX_TEMPLATES_PER_SUBJECT} templates; {name!r} has {held} "
                                  f"and {len(photos)} more were given")
        probes = [self._probe(p) for p in photos]
        registered = self.register()
        try:
            if self.protocol == "refresh":
                probes = [self.refresh(p, "decision" if decision_ready else "score") for p in probes]
            if existing is not None:
                return self.transport.add_templates(self.key_id, existing.subject_id, probes)
            return self.transport.create_subject(self.key_id, name, probes)
        except ServerError as exc:
            if registered:
                with contextlib.suppress(CryptoFaceError):
                    self.transport.delete_key_set(self.key_id)
            if exc.status == 409 and not add and exc.code not in ("key_set_pending", "template_cap"):
                raise _exists(name) from exc  # enrolled meanwhile by another client of this key set
            if exc.code == "template_cap":
                raise CryptoFaceError(f"{name!r} has as many templates as the server allows ({exc.detail}); "
                                      "delete one first ('cryptoface delete template ID')") from exc
            raise
        except BaseException:
            if registered:
                with contextlib.suppress(CryptoFaceError):  # the enrolment's own error is the one to report
                    self.transport.delete_key_set(self.key_id)
            raise

    def subjects(self) -> list[Subject]:
        """The subjects enrolled under this key set (none when the service does not know the key set)."""
        try:
            return self.transport.subjects(self.key_id)
        except ServerError as exc:
            if exc.status == 404 or exc.code == "key_set_pending":
                return []
            raise

    def find_subject(self, name: str) -> Subject | None:
        """The enrolled subject called ``name`` (compared in NFC, as the service stores it), else None."""
        name = validate_name(name, "subject name")
        return next((s for s in self.subjects() if s.name == name), None)

    def delete_subject(self, name: str) -> Subject:
        """Erase the subject called ``name`` with all its templates; returns what was erased."""
        found = self.find_subject(name)
        if found is None:
            raise UnknownSubjectError(f"no subject {validate_name(name)!r} is enrolled under key set "
                                      f"{self.key_id[:12]}")
        self.transport.delete_subject(self.key_id, found.subject_id)
        return found

    def delete_template(self, template_id: int) -> None:
        """Erase one template (a subject left without templates is erased with it)."""
        self.transport.delete_template(self.key_id, int(template_id))

    # -- requests -------------------------------------------------------------------------------
    def verify(self, subject: str, probe: PhotoOrProbe, mode: str = "score") -> VerifyResult:
        """1:1: is the face ``subject``? Accepts when the best template's cosine exceeds the client's tau."""
        _check_mode(mode)
        name = validate_name(subject, "subject name")
        if not isinstance(probe, ImageProbe | TemplateProbe) and self.find_subject(name) is None:
            raise UnknownSubjectError(f"no subject {name!r} is enrolled under this key set")  # before encrypting
        probe = self._match_probe(probe, mode)
        values = [self._value(c, 0, mode) for c in self.transport.verify(self.key_id, name, probe, mode)]
        if not values:
            raise ServerError(0, "empty_result", f"the service returned no score for {name!r}")
        return VerifyResult(name, self.decide(max(values), mode), mode, values,
                            self.threshold if mode == "score" else None)

    def identify(self, probe: PhotoOrProbe, mode: str = "score") -> IdentifyResult:
        """1:N: the best enrolled subject above tau, or None."""
        _check_mode(mode)
        probe = self._match_probe(probe, mode)
        best = self._best_per_subject(self.transport.identify(self.key_id, probe, mode), mode)
        tau = self.threshold if mode == "score" else None
        if not best:
            return IdentifyResult(None, None, mode, best, tau)
        name, value = max(best.items(), key=lambda kv: kv[1])
        return IdentifyResult(name if self.decide(value, mode) else None, value, mode, best, tau)

    def compare(self, a: PhotoOrProbe, b: PhotoOrProbe) -> CompareResult:
        """1:1 without enrolment: are the faces of ``a`` and ``b`` the same person?"""
        return self.compare_pairs([(a, b)])[0]

    def compare_pairs(self, pairs: Sequence[tuple[PhotoOrProbe, PhotoOrProbe]]) -> list[CompareResult]:
        """Score a batch of pairs in one request (the server packs their cosines); results in pair order."""
        if not pairs:
            return []
        probes = [(self._match_probe(a), self._match_probe(b)) for a, b in pairs]
        values: list[float] = []
        for chunk in self.transport.compare(self.key_id, probes):
            slots = self.decrypt_slots(chunk.ciphertext)
            values += [checked_value(float(slots[i]), "score") for i in chunk.slots]
        if len(values) != len(pairs):
            raise ServerError(0, "wrong_count", f"the service returned {len(values)} scores for {len(pairs)} pairs")
        return [CompareResult(v, self.decide(v), self.threshold) for v in values]

    # -- decisions ------------------------------------------------------------------------------
    def decide(self, value: float, mode: str = "score") -> bool:
        """Accept a decrypted value: cosine > tau (score mode), or a positive sign (decision mode)."""
        return value > (self.threshold if mode == "score" else 0.0)

    def decrypt_slots(self, ciphertext: bytes) -> np.ndarray:
        be = self.keys.backend
        return be.decrypt(read_untrusted(be, ciphertext))

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


def _exists(name: str) -> SubjectExistsError:
    return SubjectExistsError(f"{name!r} is enrolled already under this key set; use --add (add=True) to add "
                              "templates to it, or 'cryptoface delete subject' first")


def prove_possession(backend: Any, challenge: Challenge) -> str:
    """The answer to a registration challenge: decrypt, round each of the ``count`` values to an integer and hash
    them with the nonce. Only the hash leaves the client, never a decrypted value (whose noise depends on the
    secret key); a challenge that does not decrypt to small integers is refused instead of rounded."""
    if not 1 <= challenge.count <= min(MAX_CHALLENGE_COUNT, backend.slots):
        raise TamperingError(f"registration challenge of {challenge.count} values refused")
    try:
        nonce = bytes.fromhex(challenge.nonce)
    except ValueError as exc:
        raise TamperingError("registration challenge nonce is not hex") from exc
    values = np.asarray(backend.decrypt(read_untrusted(backend, challenge.ciphertext)), dtype=float)
    values = values[: challenge.count]
    ints = np.rint(values)
    if (not np.all(np.isfinite(values)) or np.any(np.abs(values - ints) > CHALLENGE_TOLERANCE)
            or np.any(np.abs(ints) > MAX_CHALLENGE_VALUE)):
        raise TamperingError("the registration challenge does not decrypt to small integers: refused to answer "
                             "(rounding arbitrary values would leak information about the secret key)")
    text = ",".join(str(int(i)) for i in ints)
    return hashlib.sha256(nonce + text.encode()).hexdigest()


def checked_value(value: float, mode: str) -> float:
    """A decrypted score, refused when no honest computation could have produced it."""
    if not np.isfinite(value) or (mode == "score" and abs(value) > 1.0 + COSINE_MARGIN):
        raise TamperingError(f"decrypted score {value:.6g} is not a cosine: the result was not computed from two "
                             "normalised templates (a tampered template or a misbehaving server)")
    return value


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise CryptoFaceError(f"mode must be one of {MODES}, got {mode!r}")
