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

A key home with a matching ring (:attr:`ClientKeys.match`) holds two key sets, both registered: the network's,
under which photos are encrypted and inferred, and the ring's, under which refreshed score-mode templates are
encrypted, enrolled and matched (394 KB a template instead of 3.15 MB, 1:N several times faster). Decision-ready
templates need more levels than the ring has and stay under the network's key set. Subject names are unique
across both; the client finds which key set holds a subject before it matches.
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
from cryptoface.engine import output_embedding, plan_for
from cryptoface.engine.layout import TemplateLayout
from cryptoface.errors import CryptoFaceError, ModelFileError, ParameterError
from cryptoface.match.layout import EMBEDDING_DIM, normalised_layout
from cryptoface.match.refresh import fresh_slots, normalised, raw_embedding
from cryptoface.model.tail import ModelTail
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
        self._tail: tuple[str, ModelTail] | None = None  # (digest, tail) of the served model's tail, once fetched

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

    def key_sets(self) -> list[ClientKeys]:
        """The key sets of this client: the network's, then the matching ring's if the home has one."""
        return self.keys.key_sets()

    def matcher(self, mode: str = "score") -> ClientKeys:
        """The key set new templates of ``mode`` are enrolled and matched under: the matching ring for refreshed
        score-mode templates when the home has one, else the network's."""
        ring = self.keys.match
        return ring if ring is not None and mode == "score" and self.protocol == "refresh" else self.keys

    # -- keys -----------------------------------------------------------------------------------
    def register(self) -> bool:
        """Make sure the service holds this client's key sets, proven and complete; True when one was created now.

        New: the public key goes first, the service's challenge is answered (:func:`prove_possession`), then
        each evaluation key is uploaded. A pending key set (an interrupted registration: its challenge is gone) is
        erased and registered again; an active one only gets the kinds it lacks. A registration created here is
        withdrawn if any later step fails."""
        return bool(self._register_all())

    def _register_all(self) -> list[str]:
        """Register every key set of this client; the ids of those created now (withdrawn again on failure)."""
        created: list[str] = []
        try:
            for keys in self.key_sets():
                if self._register(keys):
                    created.append(keys.key_id)
        except BaseException:
            self._withdraw(created)
            raise
        return created

    def _withdraw(self, key_ids: Sequence[str]) -> None:
        for key_id in key_ids:
            with contextlib.suppress(CryptoFaceError):  # the caller's own error is the one to report
                self.transport.delete_key_set(key_id)

    def _register(self, keys: ClientKeys) -> bool:
        info = self.transport.key_set(keys.key_id)
        if info is not None and info.status == "pending":
            self.transport.delete_key_set(keys.key_id)
            info = None
        have = set() if info is None else set(info.key_kinds) | {"public"}
        if info is not None and keys.key_kinds and not set(keys.key_kinds) - have:
            return False  # complete: nothing is read or exported again
        stream = keys.evaluation_keys(exclude=have)
        created = False
        try:
            if info is None:
                kind, public = next(stream)
                if kind != "public":  # pragma: no cover - evaluation_keys yields the public key first
                    raise CryptoFaceError("the key home's public key is missing")
                challenge = self.transport.create_key_set(keys.backend_name, keys.params_json, public)
                created = True
                if challenge.key_id != keys.key_id:
                    raise ServerError(0, "key_id_mismatch", f"the service registered key set {challenge.key_id}, "
                                      f"the client has {keys.key_id}")
                self.transport.prove(keys.key_id, prove_possession(keys.backend, challenge))
            for kind, data in stream:
                self.transport.add_key(keys.key_id, kind, data)
        except BaseException:
            if created:
                self._withdraw([keys.key_id])
            raise
        return created

    def delete_key_set(self, key_id: str | None = None) -> None:
        """Erase a key set (default: this client's, the matching ring's too) on the service with everything enrolled
        under it. The local keys stay: registering them again starts from empty key sets."""
        if key_id is not None:
            self.transport.delete_key_set(key_id)
            return
        for keys in reversed(self.key_sets()):
            try:
                self.transport.delete_key_set(keys.key_id)
            except ServerError as exc:
                if exc.status != 404 or keys is self.keys:  # a ring never registered is nothing to erase
                    raise

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

    def refresh(self, probe: PhotoOrProbe, mode: str = "score", *, keys: ClientKeys | None = None) -> TemplateProbe:
        """The probe's template normalised here and encrypted afresh, under ``keys`` (default :meth:`matcher`), at
        the levels ``mode`` needs.

        A photo or image probe costs one encrypted inference on the service (which returns the raw template, or
        for Net4 the last block's output, finished here with the served model's tail); a raw template probe is
        decrypted directly; a normalised one is returned as it is when it is under ``keys`` with
        the levels, else decrypted and encrypted afresh for them. The decrypted template stays in this process: only
        a new encryption of its normalised copy is sent."""
        _check_mode(mode)
        template = self.infer(probe)
        target = keys or self.matcher(mode)
        level = LEVELS.fresh_template(mode)
        if template.normalised:
            if self._holds(target, template, level):
                return template
            unit = self._fresh_values(template)  # made for another key set or mode: encrypted afresh for this one
        else:
            unit = self._normalised_template(template)
        be = target.backend
        if be.params.levels < level:
            raise CryptoFaceError(f"a fresh {mode}-mode template needs {level} levels; this key set has "
                                  f"{be.params.levels}")
        fresh = be.encrypt(fresh_slots(unit, be.slots), level)
        return TemplateProbe(be.serialize(fresh), normalised_layout(be.slots).stride, 1, normalised=True)

    @staticmethod
    def _holds(keys: ClientKeys, template: TemplateProbe, level: int) -> bool:
        """Whether a fresh template is under ``keys`` with at least ``level`` levels."""
        try:
            return keys.backend.level(read_untrusted(keys.backend, template.ciphertext)) >= level
        except CryptoFaceError:
            return False

    def _fresh_values(self, template: TemplateProbe) -> np.ndarray:
        """The 256 values of a fresh template this client made, under whichever of its key sets it is."""
        for keys in self.key_sets():
            be = keys.backend
            try:
                ct = read_untrusted(be, template.ciphertext)
            except CryptoFaceError:
                continue
            return normalised(be.decrypt(ct)[normalised_layout(be.slots).slots_of(EMBEDDING_DIM)])
        raise TamperingError("a normalised template under none of this client's key sets")

    def _normalised_template(self, template: TemplateProbe) -> np.ndarray:
        """The raw template decrypted under the network's key set and normalised (256 values). An inference result
        must be what this key set's parameters make: a template, or the last block's output, which is finished
        here with the served model's tail (the one the result names by digest)."""
        be = self.keys.backend
        try:
            plan = None
            if template.trunk or template.inferred:
                plan = plan_for(self._resolution(), be.slots, be.params.levels)
                if template.trunk != plan.clear_tail:
                    kinds = {True: "the last block's output", False: "a template"}
                    raise TamperingError(f"the service returned {kinds[template.trunk]} where this key set's "
                                         f"parameters make {kinds[plan.clear_tail]}")
            values = be.decrypt(read_untrusted(be, template.ciphertext))
            if plan is not None and plan.clear_tail:
                tail = self._model_tail(template.tail_digest)
                if tail.resolution != plan.resolution:
                    raise TamperingError(f"the service's model tail is for {tail.resolution}x{tail.resolution} "
                                         f"inputs, this key set for {plan.resolution}x{plan.resolution}")
                return normalised(output_embedding(plan, values, tail))
            return normalised(raw_embedding(values, TemplateLayout(template.stride, template.replicas)))
        except (ParameterError, ValueError) as exc:
            raise TamperingError(f"the service's template cannot be refreshed: {exc}") from exc

    def _model_tail(self, digest: str) -> ModelTail:
        """The served model's tail whose :meth:`~cryptoface.model.tail.ModelTail.digest` is ``digest`` (fetched
        when it is not the one kept)."""
        if self._tail is None or self._tail[0] != digest:
            if not digest:
                raise TamperingError("the service returned a block output that names no model tail")
            _, data = self.transport.model_tail()
            try:
                tail = ModelTail.from_bytes(data)
            except ModelFileError as exc:
                raise TamperingError(f"the service's model tail is unusable: {exc}") from exc
            if tail.digest() != digest:
                raise CryptoFaceError("the service's model tail is not the one that computed this result (its model "
                                      "changed, or its replicas serve different models): run the request again")
            self._tail = (digest, tail)
        return self._tail[1]

    def _probe(self, probe: PhotoOrProbe) -> Probe:
        return probe if isinstance(probe, ImageProbe | TemplateProbe) else self.encrypt_photo(probe)

    def _match_probe(self, probe: PhotoOrProbe, mode: str = "score", keys: ClientKeys | None = None) -> Probe:
        """What a matching request under ``keys`` (default :meth:`matcher`) sends under this client's protocol."""
        return self.refresh(probe, mode, keys=keys) if self.protocol == "refresh" else self._probe(probe)

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
        protocol: templates are stored with the levels of the cosine and the 1:N merge mask (2; under the matching
        ring when the home has one), or with ``decision_ready`` with those of the cosine and the sign (10, larger,
        under the network's key set); one-round ignores it."""
        name = validate_name(subject, "subject name")
        if not photos:
            raise CryptoFaceError("nothing to enrol: give at least one photo")
        mode = "decision" if decision_ready else "score"
        found = self._find(name)
        if add and found is None:
            raise UnknownSubjectError(f"no subject {name!r} is enrolled under key set {self.key_id[:12]}; enrol it "
                                      "without --add first")
        if not add and found is not None:
            raise _exists(name)
        target, existing = (self.matcher(mode), None) if found is None else found
        if decision_ready and self.protocol == "refresh" and target is self.keys.match:
            raise CryptoFaceError(f"{name!r} is enrolled for score matching on the matching ring, which cannot hold "
                                  "decision-ready templates; enrol a new subject with --decision-ready")
        held = 0 if existing is None else len(existing.template_ids)
        if held + len(photos) > MAX_TEMPLATES_PER_SUBJECT:
            raise CryptoFaceError(f"a subject holds at most {MAX_TEMPLATES_PER_SUBJECT} templates; {name!r} has {held} "
                                  f"and {len(photos)} more were given")
        probes = [self._probe(p) for p in photos]
        registered = self._register_all()
        try:
            if self.protocol == "refresh":
                probes = [self.refresh(p, mode, keys=target) for p in probes]
            if existing is not None:
                return self.transport.add_templates(target.key_id, existing.subject_id, probes)
            return self.transport.create_subject(target.key_id, name, probes)
        except ServerError as exc:
            self._withdraw(registered)
            if exc.status == 409 and not add and exc.code not in ("key_set_pending", "template_cap"):
                raise _exists(name) from exc  # enrolled meanwhile by another client of this key set
            if exc.code == "template_cap":
                raise CryptoFaceError(f"{name!r} has as many templates as the server allows ({exc.detail}); "
                                      "delete one first ('cryptoface delete template ID')") from exc
            raise
        except BaseException:
            self._withdraw(registered)
            raise

    def subjects(self) -> list[Subject]:
        """The subjects enrolled under this client's key sets (none when the service does not know them)."""
        return [s for _, s in self._subjects()]

    def _subjects(self) -> list[tuple[ClientKeys, Subject]]:
        out = []
        for keys in self.key_sets():
            try:
                out += [(keys, s) for s in self.transport.subjects(keys.key_id)]
            except ServerError as exc:
                if exc.status != 404 and exc.code != "key_set_pending":
                    raise
        return out

    def _find(self, name: str) -> tuple[ClientKeys, Subject] | None:
        """(key set holding it, subject) for the subject called ``name``, else None."""
        return next(((k, s) for k, s in self._subjects() if s.name == name), None)

    def find_subject(self, name: str) -> Subject | None:
        """The enrolled subject called ``name`` (compared in NFC, as the service stores it), else None."""
        found = self._find(validate_name(name, "subject name"))
        return None if found is None else found[1]

    def delete_subject(self, name: str) -> Subject:
        """Erase the subject called ``name`` with all its templates; returns what was erased."""
        found = self._find(validate_name(name, "subject name"))
        if found is None:
            raise UnknownSubjectError(f"no subject {validate_name(name)!r} is enrolled under key set "
                                      f"{self.key_id[:12]}")
        keys, subject = found
        self.transport.delete_subject(keys.key_id, subject.subject_id)
        return subject

    def delete_subject_id(self, subject_id: int) -> Subject:
        """Erase the subject with the service's id ``subject_id`` (under whichever key set holds it)."""
        found = next(((k, s) for k, s in self._subjects() if s.subject_id == int(subject_id)), None)
        if found is None:
            raise UnknownSubjectError(f"no subject {int(subject_id)} is enrolled under this client's key sets")
        keys, subject = found
        self.transport.delete_subject(keys.key_id, subject.subject_id)
        return subject

    def delete_template(self, template_id: int) -> None:
        """Erase one template (a subject left without templates is erased with it)."""
        holder = next((k for k, s in self._subjects() if int(template_id) in s.template_ids), self.keys)
        self.transport.delete_template(holder.key_id, int(template_id))  # not found: the service's own error

    # -- requests -------------------------------------------------------------------------------
    def verify(self, subject: str, probe: PhotoOrProbe, mode: str = "score") -> VerifyResult:
        """1:1: is the face ``subject``? Accepts when the best template's cosine exceeds the client's tau."""
        _check_mode(mode)
        name = validate_name(subject, "subject name")
        if self.keys.match is None and isinstance(probe, ImageProbe | TemplateProbe):
            keys = self.keys  # one key set: the service says whether the subject exists
        else:
            found = self._find(name)  # before encrypting
            if found is None:
                raise UnknownSubjectError(f"no subject {name!r} is enrolled under this key set")
            keys = found[0]
        if mode == "decision" and keys is self.keys.match:
            raise CryptoFaceError(f"{name!r} is enrolled for score matching; decision-only matching needs a subject "
                                  "enrolled with --decision-ready")
        probe = self._match_probe(probe, mode, keys)
        answers = self.transport.verify(keys.key_id, name, probe, mode)
        values = [self._value(c, 0, mode, keys) for c in answers]
        if not values:
            raise ServerError(0, "empty_result", f"the service returned no score for {name!r}")
        return VerifyResult(name, self.decide(max(values), mode), mode, values,
                            self.threshold if mode == "score" else None)

    def identify(self, probe: PhotoOrProbe, mode: str = "score") -> IdentifyResult:
        """1:N: the best enrolled subject above tau, or None.

        With a matching ring, score mode scores the ring's subjects and, if any, the decision-ready ones of the
        network's key set (one inference, one fresh probe per key set)."""
        _check_mode(mode)
        best: dict[str, float] = {}
        matcher = self.matcher(mode)
        rings = [matcher]
        if matcher is not self.keys:  # the key sets that hold subjects (the ring's error if none does)
            held = [k for k, _ in self._subjects()]
            rings = [k for k in (matcher, self.keys) if any(h is k for h in held)] or [matcher]
        elif mode == "decision" and self.keys.match is not None and not any(
                k is self.keys for k, _ in self._subjects()):
            raise UnknownSubjectError("decision-only identify covers subjects enrolled with --decision-ready, and "
                                      "none is; use --mode score")
        if len(rings) > 1 or self.protocol == "refresh":
            probe = self.infer(probe)  # one inference for every key set
        for keys in rings:
            answers = self.transport.identify(keys.key_id, self._match_probe(probe, mode, keys), mode)
            for name, value in self._best_per_subject(answers, mode, keys).items():
                best[name] = max(best.get(name, -np.inf), value)
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
        keys = self.matcher()
        probes = [(self._match_probe(a, keys=keys), self._match_probe(b, keys=keys)) for a, b in pairs]
        values: list[float] = []
        for chunk in self.transport.compare(keys.key_id, probes):
            slots = self.decrypt_slots(chunk.ciphertext, keys)
            values += [checked_value(float(slots[i]), "score") for i in chunk.slots]
        if len(values) != len(pairs):
            raise ServerError(0, "wrong_count", f"the service returned {len(values)} scores for {len(pairs)} pairs")
        return [CompareResult(v, self.decide(v), self.threshold) for v in values]

    # -- decisions ------------------------------------------------------------------------------
    def decide(self, value: float, mode: str = "score") -> bool:
        """Accept a decrypted value: cosine > tau (score mode), or a positive sign (decision mode)."""
        return value > (self.threshold if mode == "score" else 0.0)

    def decrypt_slots(self, ciphertext: bytes, keys: ClientKeys | None = None) -> np.ndarray:
        """A result's slots, decrypted under ``keys`` (default: the network's key set)."""
        be = (keys or self.keys).backend
        return be.decrypt(read_untrusted(be, ciphertext))

    def _value(self, ciphertext: bytes, slot: int, mode: str, keys: ClientKeys | None = None) -> float:
        return checked_value(float(self.decrypt_slots(ciphertext, keys)[slot]), mode)

    def _best_per_subject(self, chunks: Sequence[ScoreChunk], mode: str, keys: ClientKeys | None = None
                          ) -> dict[str, float]:
        """Decrypt 1:N chunks and keep each subject's best value."""
        best: dict[str, float] = {}
        for chunk in chunks:
            slots = self.decrypt_slots(chunk.ciphertext, keys)
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
