"""Server-side matching logic, independent of HTTP: the service holds public/evaluation keys only.

There is deliberately no code path here that creates, loads or accepts a secret key: backends are built with
``from_public_keys`` and checked to hold no secret key; key kinds that look like a secret key are refused.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from cryptoface.backends import backend_class
from cryptoface.backends.protocol import CkksBackend, CkksParameters
from cryptoface.engine import infer_template
from cryptoface.errors import CiphertextError, CryptoFaceError, MissingKeyError, ParameterError
from cryptoface.match import homomorphic as hm
from cryptoface.match.layout import GalleryLayout, TemplateLayout, check_layout, gallery_layout
from cryptoface.match.threshold import DEFAULT_THRESHOLD
from cryptoface.params import LEVELS, params_from_json, params_to_json
from cryptoface.store.base import (
    ConflictError,
    NewTemplate,
    StoreError,
    TemplateRecord,
    TemplateStore,
)

MODES = ("score", "decision")


class ServiceInputError(CryptoFaceError):
    """A request that is well-formed JSON but cannot be served (HTTP 400)."""


class EngineUnavailableError(CryptoFaceError):
    """Encrypted inference is not available in this build (HTTP 501)."""


def _is_secret_kind(kind: str) -> bool:
    k = kind.lower()
    return k.startswith("secret") or k in {"sk", "private"}


@dataclass
class _KeySetState:
    backend: CkksBackend
    params: CkksParameters
    params_id: str
    lock: threading.Lock
    backend_name: str = ""
    handle: Any = None  # the executor's handle of this key set (put into Ray's object store once)


class MatchService:
    """Enrol / verify / identify on encrypted templates for any number of client key sets."""

    def __init__(
        self,
        store: TemplateStore,
        *,
        model: Any = None,
        model_id: str = "none",
        threshold: float = DEFAULT_THRESHOLD,
        cache_size: int = 4,
        progress: bool = False,
        executor: Any = None,
    ) -> None:
        """``executor`` (:mod:`cryptoface.engine.executor`, e.g. a RayExecutor): encrypted inference runs as
        patch-parallel units on it and 1:N scoring is sharded over its workers; the store stays the single
        source of truth (workers only cache keys, weights and gallery chunks by content id)."""
        self.store = store
        self.executor = executor
        self._engine: Any = None
        self._key_versions: dict[str, int] = {}
        self.model = model
        self.progress = progress  # per-layer bar during encrypted inference (CLI and demo)
        self.model_id = model_id
        self.threshold = float(threshold)
        self._cache: OrderedDict[str, _KeySetState] = OrderedDict()
        self._cache_size = cache_size
        self._cache_lock = threading.Lock()

    # -- key sets -----------------------------------------------------------------------------
    def register_keys(self, backend_name: str, params_json: str, keys: dict[str, bytes]) -> str:
        if any(_is_secret_kind(k) for k in keys):
            raise ServiceInputError("refused: the request carries a secret key; the server accepts public keys only")
        params = params_from_json(params_json)
        cls = backend_class(backend_name)
        server_backend = cls.from_public_keys(params, keys)  # raises MissingKeyError on unreadable keys
        if server_backend.has_secret_key:  # pragma: no cover - guarded by the backends themselves
            raise ServiceInputError("refused: these keys give the server a secret key")
        record = self.store.add_key_set(backend_name, params_to_json(params), keys)
        self._forget(record.key_id)
        return record.key_id

    def add_key(self, key_id: str, kind: str, data: bytes) -> None:
        """Add one evaluation key, checked against the key set's public key alone (not the whole key set)."""
        if _is_secret_kind(kind) or kind == "public":
            raise ServiceInputError(f"refused key kind {kind!r}: add evaluation keys (relin, rotation:<k>) only")
        if not (kind == "relin" or kind.startswith("rotation:")):
            raise ServiceInputError(f"unknown key kind {kind!r}; expected 'relin' or 'rotation:<step>'")
        record = self.store.get_key_set(key_id)
        public = self.store.key_set_keys(key_id, kinds=("public",))["public"]
        params = params_from_json(record.params_json)
        backend = backend_class(record.backend).from_public_keys(params, {"public": public, kind: data})
        if backend.has_secret_key:  # pragma: no cover
            raise ServiceInputError("refused: these keys give the server a secret key")
        self.store.add_key_set(record.backend, record.params_json, {kind: data, "public": public})
        self._forget(key_id)

    def delete_key_set(self, key_id: str) -> None:
        """Withdraw a registration that has no enrolled subject (a client rolling back a failed enrolment)."""
        self.store.delete_key_set(key_id, only_if_empty=True)
        self._forget(key_id)

    def _forget(self, key_id: str) -> None:
        with self._cache_lock:
            self._cache.pop(key_id, None)
            self._key_versions[key_id] = self._key_versions.get(key_id, 0) + 1  # workers' handle id changes too

    def _state(self, key_id: str) -> _KeySetState:
        with self._cache_lock:
            state = self._cache.get(key_id)
            if state is not None:
                self._cache.move_to_end(key_id)
                return state
        record = self.store.get_key_set(key_id)
        params = params_from_json(record.params_json)
        backend = backend_class(record.backend).from_public_keys(params, self.store.key_set_keys(key_id))
        if backend.has_secret_key:  # pragma: no cover
            raise ServiceInputError("refused: stored keys give the server a secret key")
        state = _KeySetState(backend, params, record.params_id, threading.Lock(), record.backend)
        with self._cache_lock:
            self._cache[key_id] = state
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return state

    def backends_hold_secret_keys(self) -> bool:
        """True if any cached server backend can decrypt (tests assert False)."""
        with self._cache_lock:
            return any(s.backend.has_secret_key for s in self._cache.values())

    # -- templates ----------------------------------------------------------------------------
    def _template_from_probe(self, state: _KeySetState, probe: dict[str, Any]) -> tuple[Any, TemplateLayout]:
        """Raw template ciphertext + layout from a request probe: images (engine) or an encrypted template."""
        be = state.backend
        if probe.get("images") is not None:
            if self.model is None:
                raise EngineUnavailableError("this server has no model loaded; send an encrypted template instead")
            resolution = probe.get("resolution")
            if resolution is not None and int(resolution) != int(self.model.resolution):
                raise ServiceInputError(
                    f"wrong resolution {resolution}: this server's model takes {self.model.resolution}x"
                    f"{self.model.resolution} inputs"
                )
            cts = [be.deserialize(b) for b in probe["images"]]
            return self._infer(be, cts, state=state, packing=probe.get("packing") or "monolithic")
        ct = be.deserialize(probe["ciphertext"])
        try:
            layout = TemplateLayout(int(probe.get("stride", 1)), int(probe.get("replicas", 1)))
            check_layout(layout, be.slots)
        except (ValueError, ParameterError) as exc:
            raise ServiceInputError(str(exc)) from exc
        return ct, layout

    def _infer(self, backend: CkksBackend, cts: list[Any], state: _KeySetState | None = None,
               packing: str = "monolithic") -> tuple[Any, TemplateLayout]:
        """The template: monolithic plan in process, or patch-parallel units on the executor.

        ``packing="units"``: the client packed each unit's patches by the Net4 plan (engine.units.encrypt_units,
        concatenated in unit order). A Net4 model is one unit whose packing is the monolithic one, so with an
        executor it always runs there. Without an executor, unit-packed probes run on an in-process executor."""
        from cryptoface.engine.units import unit_patches, unit_plan

        if packing not in ("monolithic", "units"):
            raise ServiceInputError(f"unknown input packing {packing!r}; expected 'monolithic' or 'units'")
        n_units = len(unit_patches(self.model.n_patches))
        use_units = packing == "units" or (self.executor is not None and n_units == 1)
        if not use_units or state is None:
            return infer_template(backend, self.model, cts, progress=self.progress)
        per = unit_plan(backend.slots, backend.params.levels).input_layout.n_cts
        if len(cts) != per * n_units:
            raise ServiceInputError(f"unit packing: expected {n_units} x {per} image ciphertexts, got {len(cts)}")
        engine, handle = self._engine_for(state)
        ct, layout = engine.infer(backend, handle, [cts[u * per:(u + 1) * per] for u in range(n_units)])
        return ct, layout

    def _executor(self) -> Any:
        if self.executor is None:
            from cryptoface.engine.executor import LocalExecutor

            self.executor = LocalExecutor()
        return self.executor

    def _engine_for(self, state: _KeySetState) -> tuple[Any, Any]:
        """The patch-parallel engine (one per service) and the executor's handle of this key set."""
        from cryptoface.engine.parallel import PatchParallelEngine

        ex = self._executor()
        if self._engine is None:
            self._engine = PatchParallelEngine(ex, self.model, f"{self.model_id}:{self.model.architecture}")
        return self._engine, self._handle(ex, state)

    def _handle(self, ex: Any, state: _KeySetState) -> Any:
        if state.handle is None:
            with self._cache_lock:
                key_id = next((k for k, v in self._cache.items() if v is state), None)
            if key_id is None:  # pragma: no cover - states come from the cache
                raise ServiceInputError("unknown key set")
            hid = f"{key_id}#{self._key_versions.get(key_id, 0)}"
            if getattr(ex, "kind", "local") == "local":
                state.handle = ex.keys(hid, state.backend_name, state.params, backend=state.backend)
            else:  # the store's keys, put into the object store once for this key set version
                state.handle = ex.keys(hid, state.backend_name, state.params, keys=self.store.key_set_keys(key_id))
        return state.handle

    def infer(self, key_id: str, probe: dict[str, Any]) -> dict[str, Any]:
        """Encrypted inference only: an image probe in, a template probe (raw template ciphertext) out.

        Lets a client reuse one inference for several requests (e.g. verify, then identify)."""
        if probe.get("images") is None:
            raise ServiceInputError("infer takes an image probe")
        state = self._state(key_id)
        with state.lock:
            ct, layout = self._template_from_probe(state, probe)
            data = state.backend.serialize(ct)
        return {"ciphertext": data, "stride": layout.stride, "replicas": layout.replicas}

    def _normalised(self, state: _KeySetState, probe: dict[str, Any], extra_levels: int) -> tuple[Any, int]:
        ct, layout = self._template_from_probe(state, probe)
        need = hm.normalise_levels(layout) + extra_levels
        level = state.backend.level(ct)
        if level < need:
            raise CiphertextError(f"the template is at level {level}; normalising and scoring it needs {need} levels")
        return hm.normalise(state.backend, ct, layout), int(layout.stride)

    def enroll(self, key_id: str, subject: str, probes: list[dict[str, Any]]) -> list[int]:
        """Normalise each encrypted template (or infer it from images) and store them, all or nothing."""
        if not probes:
            raise ServiceInputError("nothing to enrol")
        state = self._state(key_id)
        new = []
        with state.lock:
            for probe in probes:
                ct, stride = self._normalised(state, probe, LEVELS.score)
                new.append(
                    NewTemplate(
                        state.backend.serialize(ct), state.backend.level(ct), stride, self.model_id, state.params_id
                    )
                )
        return self.store.enroll(key_id, subject, new)

    def _check_mode(self, mode: str, template_level: int) -> int:
        if mode not in MODES:
            raise ServiceInputError(f"mode must be one of {MODES}")
        if mode == "decision":
            need = LEVELS.score + LEVELS.decision
            if template_level < need:
                raise ServiceInputError(
                    f"decision-only matching needs templates with {need} levels left, these have {template_level}; "
                    "use mode 'score' or larger parameters"
                )
            return LEVELS.decision
        return 0

    def verify(self, key_id: str, subject: str, probe: dict[str, Any], mode: str = "score") -> list[bytes]:
        """One result ciphertext per enrolled template of ``subject``: the cosine (or F(cos - tau)) in slot 0."""
        state = self._state(key_id)
        records = self.store.templates(key_id, subject)
        be = state.backend
        extra = self._check_mode(mode, min(r.level for r in records))
        out = []
        with state.lock:
            p, stride = self._normalised(state, probe, LEVELS.score + extra)
            for r in records:
                self._check_compatible(r, stride, state)
                s = hm.cosine(be, p, be.deserialize(r.ciphertext), TemplateLayout(stride))
                out.append(be.serialize(hm.decision(be, s, self.threshold) if mode == "decision" else s))
        return out

    def _check_compatible(self, r: TemplateRecord, stride: int, state: _KeySetState) -> None:
        if r.stride != stride:
            raise ServiceInputError(f"probe stride {stride} differs from the enrolled template's {r.stride}")
        if r.params_id != state.params_id:
            raise ServiceInputError("the enrolled template was made under other CKKS parameters")

    def identify(
        self, key_id: str, probe: dict[str, Any], mode: str = "score"
    ) -> list[tuple[bytes, list[int], list[str]]]:
        """Score the probe against every enrolled template: (result ciphertext, score slots, subject per slot)."""
        state = self._state(key_id)
        be = state.backend
        records = self.store.templates(key_id)
        if not records:
            raise ServiceInputError("no subject is enrolled under this key set")
        with state.lock:
            p, stride = self._normalised(state, probe, LEVELS.score + self._check_mode(mode, 10**9))
            records = [r for r in records if r.stride == stride and r.model_id == self.model_id]
            if not records:
                raise ServiceInputError(f"no enrolled template has stride {stride} and model {self.model_id!r}")
            self._check_mode(mode, min(r.level for r in records))
            gallery = gallery_layout(be.slots)  # normalised templates of any input stride pack the same way
            chunks = self._galleries(key_id, state, gallery, records)
            rep = hm.replicate_probe(be, p, gallery)
            names = {r.id: r.subject for r in records}
            out = []
            if self.executor is not None:  # gallery chunks sharded over the executor's workers
                from cryptoface.engine.parallel import sharded_scores

                scores = sharded_scores(self.executor, be, self._handle(self.executor, state), rep,
                                        [c for c, _ in chunks], [len(ids) for _, ids in chunks],
                                        self.threshold if mode == "decision" else None)
                for s_bytes, (_, ids) in zip(scores, chunks, strict=True):
                    slots = [int(x) for x in gallery.score_slots(len(ids))]
                    out.append((s_bytes, slots, [names[i] for i in ids]))
                return out
            for ct_bytes, ids in chunks:
                s = hm.gallery_scores(be, rep, be.deserialize(ct_bytes), gallery, len(ids))
                if mode == "decision":
                    s = hm.decision(be, s, self.threshold)
                slots = [int(x) for x in gallery.score_slots(len(ids))]
                out.append((be.serialize(s), slots, [names[i] for i in ids]))
        return out

    def _galleries(
        self, key_id: str, state: _KeySetState, gallery: GalleryLayout, records: list[TemplateRecord]
    ) -> list[tuple[bytes, list[int]]]:
        ids = {r.id for r in records}
        # the store keys galleries by the enrolled templates' stride (identify keeps one stride): it checks the packed
        # ids against the templates of that stride, so the gallery layout's stride would never match and no packed
        # gallery would ever be kept
        stride = records[0].stride
        stored = self.store.galleries(key_id, stride, self.model_id)
        if stored and {i for g in stored for i in g.template_ids} == ids:
            return [(g.ciphertext, list(g.template_ids)) for g in stored]
        be = state.backend
        chunks = []
        for start in range(0, len(records), gallery.capacity):
            part = records[start : start + gallery.capacity]
            packed = hm.pack_gallery(be, [be.deserialize(r.ciphertext) for r in part], gallery)
            chunks.append((be.serialize(packed), [r.id for r in part], be.level(packed)))
        with contextlib.suppress(ConflictError):  # enrolled meanwhile: serve from this packing, the next one repacks
            self.store.replace_galleries(key_id, stride, self.model_id, chunks)
        return [(c, ids_) for c, ids_, _ in chunks]

    def info(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "model_id": self.model_id,
            "model_resolution": None if self.model is None else int(self.model.resolution),
            "normalise_levels": LEVELS.normalise,
            "score_levels": LEVELS.score,
            "decision_levels": LEVELS.decision,
        }


__all__ = [
    "EngineUnavailableError",
    "MatchService",
    "MissingKeyError",
    "ServiceInputError",
    "StoreError",
]
