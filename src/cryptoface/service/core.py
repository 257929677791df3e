"""Server-side logic, independent of HTTP: tenants' key sets, subjects and encrypted matching, public keys only.

There is deliberately no code path here that creates, loads or accepts a secret key: backends are built with
``from_public_keys`` and checked to hold no secret key, and key kinds outside the parameters' allowed list are
refused by name. Every method takes the :class:`~cryptoface.service.auth.Caller`: a key set belongs to the tenant
that registered it and is invisible (UnknownKeySetError) to everyone else. Heavy work is admitted by the heavy
slots and the memory budget (BusyError, HTTP 503) before it starts, and names are checked before any computation.

One module (~550 lines) because every request path shares the same admission, ownership and key-set loading
steps; authentication, proofs, key kinds, limits, the budget and the key cache are modules of their own.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from cryptoface.backends import backend_class, read_untrusted
from cryptoface.backends.protocol import CkksBackend, CkksParameters
from cryptoface.engine import infer_template
from cryptoface.engine.plaintexts import PlaintextCache, PlaintextCacheReport, new_cache
from cryptoface.errors import CiphertextError, ParameterError
from cryptoface.match import homomorphic as hm
from cryptoface.match.layout import GalleryLayout, TemplateLayout, check_layout, gallery_layout, normalised_layout
from cryptoface.match.pairs import score_pairs, score_slots
from cryptoface.match.threshold import DEFAULT_THRESHOLD
from cryptoface.model.tail import ModelTail
from cryptoface.names import validate_name
from cryptoface.params import LEVELS, params_from_json, params_to_json
from cryptoface.service import proof as pop
from cryptoface.service.auth import Caller, new_api_token, token_hash
from cryptoface.service.budget import (
    MemoryBudget,
    key_set_cost,
    key_set_stored,
    switching_key_bytes,
    working_set,
)
from cryptoface.service.errors import (
    BadKeyKindError,
    EngineUnavailableError,
    ProofFailedError,
    ServiceInputError,
    UnauthorizedError,
)
from cryptoface.service.jobs import JobLimitError, JobQueue, JobView, Progress
from cryptoface.service.keycache import KeySetCache
from cryptoface.service.kinds import allowed_kinds
from cryptoface.service.limits import MAX_COMPARE_PAIRS, HeavySlots
from cryptoface.store.base import (
    MAX_TEMPLATES_PER_SUBJECT,
    ApiKeyRecord,
    AuditRecord,
    ConflictError,
    KeySetPendingError,
    KeySetRecord,
    NewTemplate,
    StoreError,
    SubjectRecord,
    TemplateCapError,
    TemplateRecord,
    TemplateStore,
    TenantRecord,
    UnknownKeySetError,
    key_fingerprint,
)

MODES = ("score", "decision")
# {"images": [bytes], "resolution", "packing"} or {"ciphertext": bytes, "stride", "replicas", "normalised"}
Probe = dict[str, Any]


@dataclass
class _KeySetState:
    key_id: str
    backend: CkksBackend
    params: CkksParameters
    params_id: str
    lock: threading.Lock
    backend_name: str
    version: int
    handle: Any = None  # the executor's handle of this key set (put into Ray's object store once)

    def close(self) -> None:
        """Free what dropping the backend does not (the key cache calls this when it drops the state)."""
        _discard(self.backend)


def _discard(backend: CkksBackend) -> None:
    """Unload a server backend's keys from the process: OpenFHE keeps them in process-wide maps, not in the object."""
    unload = getattr(backend, "unload_keys", None)
    if unload is not None:
        unload()


def _answer(backend: CkksBackend, ct: Any) -> bytes:
    """A result ciphertext as sent to the client (at level 0: one RNS limb to download)."""
    return backend.serialize(hm.lowest_level(backend, ct))


def _has_images(probes: Sequence[Probe]) -> bool:
    return any(p.get("images") is not None for p in probes)


Report = Callable[[Progress], None]


class MatchService:
    """Tenants' key sets, subjects and encrypted matching (enrol / verify / identify / infer)."""

    def __init__(
        self,
        store: TemplateStore,
        *,
        model: Any = None,
        model_id: str = "none",
        threshold: float = DEFAULT_THRESHOLD,
        progress: bool = False,
        executor: Any = None,
        memory_budget: int | None = None,
        budget_baseline: int | None = None,
        observe_rss: bool = False,
        max_heavy: int = 1,
        retry_after: int = 30,
        device: str = "cpu",
        plaintext_budget: int | None = None,
        keep_plaintexts: bool | None = None,
    ) -> None:
        """``executor`` (:mod:`cryptoface.engine.executor`, e.g. a RayExecutor): inference runs as patch-parallel
        units on it and 1:N scoring is sharded over its workers. ``memory_budget`` (bytes, default 70 % of the
        machine's memory) bounds loaded key sets and concurrent work (``observe_rss``: measured against the
        process's resident memory too, as ``serve`` does); ``max_heavy`` bounds concurrent heavy
        requests; a refusal says to retry after ``retry_after`` seconds. ``device="gpu"``: desilofhe key sets run in
        its CUDA mode (other backends have no GPU mode and stay on the CPU). ``keep_plaintexts`` (default: for key
        sets on a GPU): weight plaintexts are encoded by the first inference of each parameter set and kept,
        ``plaintext_budget`` bytes of them in full form (default 60 % of the GPU's memory, the rest compact; on
        the CPU 8 GB, counted in the memory budget for good, the rest encoded per inference). GPU memory has no
        budget of its own: the host budget's charges for loaded key sets bound how many are on the device."""
        self.store = store
        self.executor = executor
        self.model = model
        self.progress = progress  # per-layer bar during encrypted inference (CLI and demo)
        self.model_id = model_id
        self._tail: tuple[bytes, str] | None = None  # the model's tail as clients get it, and its digest
        self.threshold = float(threshold)
        self.budget = MemoryBudget(memory_budget, baseline=budget_baseline, retry_after=retry_after,
                                   observe_rss=observe_rss)
        self.slots = HeavySlots(max_heavy, retry_after)
        self.cache = KeySetCache(self.budget)
        self._engine: Any = None
        self._units_executor: Any = None  # in-process executor for unit-packed probes when none was configured
        self._versions: dict[str, int] = {}
        self._versions_lock = threading.Lock()
        self._resident: set[str] = set()  # OpenFHE key sets whose relinearisation key stays in this process
        self.device = device
        self.keep_plaintexts = keep_plaintexts
        self._plaintext_budget = plaintext_budget
        self._plaintexts: dict[str, PlaintextCache] = {}  # backend:device:params id -> kept weight plaintexts
        self._plaintexts_lock = threading.Lock()
        self.jobs = JobQueue(max_heavy)  # inference as jobs: as many run at once as there are heavy slots
        self._job_bytes = 0  # image bytes held by jobs that have not ended
        self._job_bytes_lock = threading.Lock()

    def close(self) -> None:
        """Cancel the jobs and stop their workers (the store and executor belong to the caller)."""
        self.jobs.close()

    # -- admin: tenants and API keys ------------------------------------------------------------------
    @staticmethod
    def _admin(caller: Caller) -> None:
        if not caller.is_admin:
            raise UnauthorizedError("this needs the admin credential")

    def create_tenant(self, caller: Caller, name: str) -> TenantRecord:
        self._admin(caller)
        return self.store.create_tenant(validate_name(name, "tenant name"), actor=caller.actor)

    def tenants(self, caller: Caller) -> list[TenantRecord]:
        self._admin(caller)
        return self.store.list_tenants()

    def create_api_key(self, caller: Caller, tenant_id: str) -> tuple[ApiKeyRecord, str]:
        """A new API key of ``tenant_id``: its record and the token (returned once; only its hash is stored)."""
        self._admin(caller)
        self.store.get_tenant(tenant_id)
        key_id, token = new_api_token()
        return self.store.add_api_key(tenant_id, key_id, token_hash(token), actor=caller.actor), token

    def revoke_api_key(self, caller: Caller, key_id: str) -> None:
        self._admin(caller)
        self.store.revoke_api_key(key_id, actor=caller.actor)

    def audit(self, caller: Caller, after: int = 0, limit: int = 1000) -> list[AuditRecord]:
        """The caller's audit rows (the admin's: every tenant's) with id > ``after``."""
        return self.store.audit(caller.tenant_id, after, limit)

    # -- key sets -----------------------------------------------------------------------------------
    @staticmethod
    def _tenant(caller: Caller) -> str:
        if caller.tenant_id is None:
            raise UnauthorizedError("key sets belong to tenants: use a tenant's API key")
        return caller.tenant_id

    def _owned(self, caller: Caller, key_id: str) -> KeySetRecord:
        """The caller's key set; another tenant's is UnknownKeySetError, exactly like one that does not exist."""
        return self.store.get_key_set(key_id, self._tenant(caller))

    def _active(self, caller: Caller, key_id: str, probes: Sequence[Probe] = (), *,
                block_output: bool = False) -> KeySetRecord:
        """The caller's active key set, after the checks that need no computation (state, model and levels for
        images). ``block_output``: the caller takes the last block's output where the key set's parameters stop
        the network before its tail (only ``infer`` does: its client finishes it); others need a template."""
        record = self._owned(caller, key_id)
        if record.status != "active":
            raise KeySetPendingError("the key set is pending: answer its proof-of-possession challenge first")
        if _has_images(probes):
            if self.model is None:
                raise EngineUnavailableError("this server has no model loaded; send an encrypted template instead")
            levels = params_from_json(record.params_json).levels
            try:  # before anything is queued or deserialised
                clear_tail, _ = LEVELS.plan_end(self.model.resolution, levels)
            except ParameterError as exc:
                raise ServiceInputError(f"this key set has {levels} levels, too few for the network ({exc}): it is "
                                        "a matching key set (send images under the client's network key set)") from exc
            if clear_tail and not block_output:
                raise ServiceInputError("this key set's parameters stop the network before its tail, which the "
                                        "client finishes: infer, refresh the template on the client and send it "
                                        "normalised")
        return record

    def key_set(self, caller: Caller, key_id: str) -> KeySetRecord:
        return self._owned(caller, key_id)

    def key_sets(self, caller: Caller) -> list[KeySetRecord]:
        return self.store.list_key_sets(self._tenant(caller))

    def register(self, caller: Caller, backend_name: str, params_json: str,
                 public: bytes) -> tuple[KeySetRecord, pop.Challenge]:
        """A pending key set holding only ``public``, and the proof-of-possession challenge to answer."""
        tenant = self._tenant(caller)
        params = params_from_json(params_json)
        cls = backend_class(backend_name)
        if not public:
            raise ServiceInputError("empty public key")
        key_id = key_fingerprint(public)
        with contextlib.suppress(UnknownKeySetError):
            self.store.get_key_set(key_id)
            raise ConflictError(f"key set {key_id[:12]} is registered already; key sets are create-only")
        cls.screen(params, "public", public)  # hostile bytes die in a child process, not in the server
        backend = cls.from_public_keys(params, {"public": public})  # MissingKeyError on unreadable keys
        if backend.has_secret_key:  # pragma: no cover - guarded by the backends themselves
            raise ServiceInputError("refused: these keys give the server a secret key")
        challenge, expected = pop.make_challenge(backend)
        record = self.store.create_key_set(tenant, backend_name, params_to_json(params), public, expected,
                                           actor=caller.actor)
        return record, challenge

    def prove(self, caller: Caller, key_id: str, proof: str) -> KeySetRecord:
        """Activate a pending key set if ``proof`` answers its challenge; too many wrong answers delete it."""
        tenant = self._tenant(caller)
        record = self._owned(caller, key_id)
        if record.status == "active":
            raise ConflictError("the key set is active already; there is no challenge to answer")
        if pop.proof_matches(record.proof_hash, proof):
            return self.store.activate_key_set(tenant, key_id, actor=caller.actor)
        attempts = self.store.record_failed_proof(tenant, key_id, actor=caller.actor)
        if attempts >= pop.MAX_FAILED_PROOFS:
            with contextlib.suppress(UnknownKeySetError):
                self.store.delete_key_set(tenant, key_id, actor=caller.actor)
            self._forget(key_id)
            raise ProofFailedError(f"wrong proof of possession {attempts} times: the key set was deleted; "
                                   "register it again")
        raise ProofFailedError(f"wrong proof of possession ({pop.MAX_FAILED_PROOFS - attempts} attempts left): "
                               "decrypt the challenge, round each value, hash them with the nonce")

    def allowed_kinds(self, params: CkksParameters) -> frozenset[str]:
        """Evaluation-key kinds a key set with ``params`` may hold on this server (its model's plan included)."""
        resolution = None if self.model is None else int(self.model.resolution)
        units = self.model is not None and int(self.model.n_patches) > 4
        return allowed_kinds(params.slots, params.levels, resolution, units)

    def add_key(self, caller: Caller, key_id: str, kind: str, data: bytes) -> KeySetRecord:
        """Store one evaluation key, create-only, checked against the key set's public key alone."""
        tenant = self._tenant(caller)
        record = self._owned(caller, key_id)
        if record.status != "active":
            raise KeySetPendingError("the key set is pending: answer its proof-of-possession challenge first")
        params = params_from_json(record.params_json)
        if kind not in self.allowed_kinds(params):
            raise BadKeyKindError(f"key kind {kind[:80]!r} is not one this key set can hold: 'relin' or "
                                  "'rotation:<k>' for a step of the matching or engine plan of these parameters")
        if kind in record.key_kinds:
            raise ConflictError(f"key {kind!r} is stored already; key sets are create-only (register a new one)")
        if not data:
            raise ServiceInputError("empty key body")
        public = self.store.key_set_keys(key_id, kinds=("public",))["public"]
        cls = backend_class(record.backend)
        cls.screen(params, kind, data)
        backend = cls.from_public_keys(params, {"public": public, kind: data})
        try:
            if backend.has_secret_key:  # pragma: no cover
                raise ServiceInputError("refused: these keys give the server a secret key")
        finally:
            _discard(backend)  # only a check: the key is loaded for serving later, from the store
        out = self.store.add_key(tenant, key_id, kind, data, actor=caller.actor)
        self._forget(key_id)
        return out

    def delete_key_set(self, caller: Caller, key_id: str) -> None:
        """Erase the key set with its keys, subjects, templates and galleries (pending or active)."""
        self.store.delete_key_set(self._tenant(caller), key_id, actor=caller.actor)
        self._forget(key_id)

    def _forget(self, key_id: str) -> None:
        with self._versions_lock:
            self._versions[key_id] = self._versions.get(key_id, 0) + 1  # workers' handle id changes too
        self.cache.forget(key_id)

    def _load(self, record: KeySetRecord) -> _KeySetState:
        with self._versions_lock:
            version = self._versions.get(record.key_id, 0)
        params = params_from_json(record.params_json)
        backend = backend_class(record.backend).from_public_keys(params, self.store.key_set_keys(record.key_id),
                                                                 **self._backend_options(record.backend))
        if backend.has_secret_key:  # pragma: no cover
            raise ServiceInputError("refused: stored keys give the server a secret key")
        self._retain_residue(record, params)
        return _KeySetState(record.key_id, backend, params, record.params_id, threading.Lock(), record.backend,
                            version)

    def _retain_residue(self, record: KeySetRecord, params: CkksParameters) -> None:
        """OpenFHE keeps a key set's relinearisation key in a process-wide map that cannot be emptied per key set
        (:mod:`cryptoface.backends.openfhe_keys`): once loaded it outlives eviction, so the budget counts it as
        held for good, once per key set (~155 MB at the default parameters)."""
        if record.backend != "openfhe" or "relin" not in record.key_kinds:
            return
        with self._versions_lock:
            if record.key_id in self._resident:
                return
            self._resident.add(record.key_id)
        self.budget.retain(switching_key_bytes(params))

    def _backend_options(self, backend: str) -> dict[str, Any]:
        """Options for loading a key set of ``backend``: the GPU for desilofhe when the service has one."""
        return {"device": self.device} if backend == "desilofhe" and self.device != "cpu" else {}

    def _plaintext_cache(self, state: _KeySetState) -> PlaintextCache | None:
        """The kept weight plaintexts for this key set's backend and parameters (one cache for each, shared by
        every key set: plaintexts do not depend on keys). The first cache gets the budget; a later one keeps
        compact plaintexts only."""
        device = getattr(state.backend, "device", "cpu")
        if self.model is None:
            return None
        with self._plaintexts_lock:
            scope = f"{state.backend_name}:{device}:{state.params_id}"
            cache = self._plaintexts.get(scope)
            if cache is None:
                # in this process's memory (CPU): the whole budget is held for good, and nothing beyond it
                cache = new_cache(device, self.keep_plaintexts, 0 if self._plaintexts else self._plaintext_budget,
                                  compact=device != "cpu")
                if cache is None:
                    return None
                if device == "cpu":
                    self.budget.retain(cache.budget_bytes)
                self._plaintexts[scope] = cache
            return cache

    def plaintext_reports(self) -> dict[str, PlaintextCacheReport]:
        """What each weight-plaintext cache holds, by "backend:device:parameters id" (operators, benchmarks)."""
        with self._plaintexts_lock:
            return {scope: cache.report() for scope, cache in self._plaintexts.items()}

    def _key_cost(self, record: KeySetRecord) -> tuple[int, int]:
        """(bytes charged while the key set is loaded, bytes charged on top while it is being read)."""
        params = params_from_json(record.params_json)
        n_eval = len([k for k in record.key_kinds if k != "public"])
        stored = self.store.key_set_bytes(record.key_id)
        return (key_set_cost(record.backend, params, stored, n_eval),
                key_set_stored(record.backend, params, stored, n_eval))

    @contextlib.contextmanager
    def _serving(self, record: KeySetRecord, heavy: bool) -> Iterator[_KeySetState]:
        """The loaded key set, admitted: a heavy slot if ``heavy``, its keys and the working set in the budget."""
        if record.status != "active":
            raise KeySetPendingError("the key set is pending: answer its proof-of-possession challenge first")
        params = params_from_json(record.params_json)
        patches = 4 if self.model is None else int(self.model.n_patches)
        need = working_set(params, "infer" if heavy else "match", patches)
        reading = [0]

        def cost() -> int:  # on a cache miss only
            loaded, reading[0] = self._key_cost(record)
            return loaded

        def load() -> _KeySetState:
            with self.budget.reserve(reading[0], "reading a key set"):
                return self._load(record)

        with self.slots.hold(heavy), self.cache.use(record.key_id, cost, load) as state, \
                self.budget.reserve(need, "an inference" if heavy else "matching"):
            yield state

    def backends_hold_secret_keys(self) -> bool:
        """True if any loaded server backend can decrypt (tests assert False)."""
        return any(s.backend.has_secret_key for s in self.cache.states())

    # -- templates ----------------------------------------------------------------------------------
    def _template_from_probe(self, state: _KeySetState, probe: Probe, report: Report | None = None
                             ) -> tuple[Any, Any]:
        """Raw template ciphertext + layout from a request probe: images (engine) or an encrypted template;
        ``report`` gets the inference's progress. Under parameters with a clear tail the engine's output is the
        last block's (a PlanarLayout): :meth:`_active` lets only ``infer`` get this far with images then."""
        be = state.backend
        if probe.get("images") is not None:
            if self.model is None:
                raise EngineUnavailableError("this server has no model loaded; send an encrypted template instead")
            if not probe["images"]:
                raise ServiceInputError("an image probe needs at least one ciphertext")
            resolution = probe.get("resolution")
            if resolution is not None and int(resolution) != int(self.model.resolution):
                raise ServiceInputError(
                    f"wrong resolution {resolution}: this server's model takes {self.model.resolution}x"
                    f"{self.model.resolution} inputs"
                )
            cts = [read_untrusted(be, b) for b in probe["images"]]
            return self._infer(state, cts, packing=probe.get("packing") or "monolithic", report=report)
        if probe.get("normalised"):
            raise ServiceInputError("this request takes images or a raw template, not a client-normalised one")
        ct = read_untrusted(be, probe["ciphertext"])
        try:
            layout = TemplateLayout(int(probe.get("stride", 1)), int(probe.get("replicas", 1)))
            check_layout(layout, be.slots)
        except (ValueError, ParameterError) as exc:
            raise ServiceInputError(str(exc)) from exc
        return ct, layout

    @staticmethod
    def _fresh_template(state: _KeySetState, probe: Probe, need: int) -> tuple[Any, int]:
        """A client-normalised template (refresh protocol): checked for layout and levels, used as it is."""
        be = state.backend
        stride = normalised_layout(be.slots).stride
        if int(probe.get("stride", stride)) != stride or int(probe.get("replicas", 1)) != 1:
            raise ServiceInputError(f"a normalised template has stride {stride} (slots / 256) and one copy at these "
                                    "parameters")
        ct = read_untrusted(be, probe["ciphertext"])
        level = be.level(ct)
        if level < need:
            raise CiphertextError(f"the normalised template is at level {level}; this matching needs {need} levels")
        return ct, stride

    def _infer(self, state: _KeySetState, cts: list[Any], packing: str = "monolithic", report: Report | None = None
               ) -> tuple[Any, Any]:
        """The template (with a clear tail the last block's output): monolithic plan in process, or patch-parallel
        units on the executor.

        ``packing="units"``: the client packed each unit's patches by the Net4 plan (engine.units.encrypt_units,
        concatenated in unit order). A Net4 model is one unit whose packing is the monolithic one, so with an
        executor it always runs there. Without an executor, unit-packed probes run on an in-process executor kept
        for them alone: the packing of one request never changes how the server runs the next."""
        from cryptoface.engine.units import unit_patches, unit_plan

        if packing not in ("monolithic", "units"):
            raise ServiceInputError(f"unknown input packing {packing!r}; expected 'monolithic' or 'units'")
        n_units = len(unit_patches(self.model.n_patches))
        use_units = packing == "units" or (self.executor is not None and n_units == 1)
        if not use_units:
            on_layer = None if report is None else (lambda done, total, name: report(Progress(done, total, name)))
            return infer_template(state.backend, self.model, cts, progress=self.progress,
                                  plaintexts=self._plaintext_cache(state), model_id=self.model_id, on_layer=on_layer)
        per = unit_plan(state.backend.slots, state.backend.params.levels).input_layout.n_cts
        if len(cts) != per * n_units:
            raise ServiceInputError(f"unit packing: expected {n_units} x {per} image ciphertexts, got {len(cts)}")
        engine, handle = self._engine_for(state)
        if report is not None:  # the units run elsewhere as one step: progress is coarse
            report(Progress(0, 1, f"{n_units} patch-parallel unit(s)"))
        out = engine.infer(state.backend, handle, [cts[u * per:(u + 1) * per] for u in range(n_units)])
        if report is not None:
            report(Progress(1, 1, "done"))
        return out

    def _units_runner(self) -> Any:
        """The executor unit-packed probes run on: the configured one, else a private in-process one."""
        if self.executor is not None:
            return self.executor
        if self._units_executor is None:
            from cryptoface.engine.executor import LocalExecutor

            self._units_executor = LocalExecutor()
        return self._units_executor

    def _engine_for(self, state: _KeySetState) -> tuple[Any, Any]:
        """The patch-parallel engine (one per service) and the executor's handle of this key set."""
        from cryptoface.engine.parallel import PatchParallelEngine

        ex = self._units_runner()
        if self._engine is None:
            self._engine = PatchParallelEngine(ex, self.model, f"{self.model_id}:{self.model.architecture}")
        return self._engine, self._handle(ex, state)

    def _handle(self, ex: Any, state: _KeySetState) -> Any:
        if state.handle is None:
            hid = f"{state.key_id}#{state.version}"
            if getattr(ex, "kind", "local") == "local":
                state.handle = ex.keys(hid, state.backend_name, state.params, backend=state.backend)
            else:  # the store's keys, put into the object store once for this key set version
                state.handle = ex.keys(hid, state.backend_name, state.params,
                                       keys=self.store.key_set_keys(state.key_id))
        return state.handle

    def infer(self, caller: Caller, key_id: str, probe: Probe, report: Report | None = None) -> dict[str, Any]:
        """Encrypted inference only: an image probe in, a template probe out (the raw template, or under parameters
        with a clear tail the last block's output with the digest of the tail that finishes it).

        Lets a client reuse one inference for several requests (e.g. verify, then identify). ``report`` gets the
        progress per network layer; an exception it raises (a cancelled job) stops the inference there."""
        if probe.get("images") is None:
            raise ServiceInputError("infer takes an image probe")
        record = self._active(caller, key_id, [probe], block_output=True)
        with self._serving(record, heavy=True) as state, state.lock:
            ct, layout = self._template_from_probe(state, probe, report)
            data = state.backend.serialize(ct)
            clear_tail, _ = LEVELS.plan_end(self.model.resolution, state.backend.params.levels)
        if clear_tail:  # the client finishes it with the tail whose digest it gets here
            return {"ciphertext": data, "stride": 1, "replicas": 1, "trunk": True, "model_id": self.model_id,
                    "tail_digest": self._model_tail()[1]}
        return {"ciphertext": data, "stride": layout.stride, "replicas": layout.replicas, "trunk": False,
                "model_id": self.model_id, "tail_digest": ""}

    def _model_tail(self) -> tuple[bytes, str]:
        """The served model's tail as clients get it and its digest (made once; the model never changes)."""
        if self.model is None:
            raise EngineUnavailableError("this server has no model loaded")
        if self.model.resolution not in LEVELS.clear_tail:
            raise EngineUnavailableError(f"this server's {self.model.architecture} keeps its whole network on the "
                                         "server: it has no tail for clients to finish")
        if self._tail is None:
            tail = ModelTail.of(self.model)
            self._tail = (tail.to_bytes(), tail.digest())
        return self._tail

    def model_tail(self, caller: Caller) -> dict[str, Any]:
        """The served model's tail (pool quadratic, head, bias) for clients that finish the network in the clear."""
        self._tenant(caller)
        data, digest = self._model_tail()
        return {"model_id": self.model_id, "resolution": int(self.model.resolution), "tail": data,
                "tail_digest": digest}

    # -- jobs ---------------------------------------------------------------------------------------
    def submit_infer(self, caller: Caller, key_id: str, probe: Probe) -> JobView:
        """:meth:`infer` as a job: checked now (key set owned and active, an image probe), its images charged to
        the memory budget until it ends (BusyError when they do not fit), run when a heavy slot is free; the
        result is collected with :meth:`job_result`."""
        if probe.get("images") is None:
            raise ServiceInputError("an inference job takes an image probe")
        self._active(caller, key_id, [probe], block_output=True)
        held = sum(len(c) for c in probe["images"])  # the image ciphertexts wait in memory with the job
        with self._job_bytes_lock:  # waiting jobs may hold a quarter of the budget: the running one needs the rest
            if self._job_bytes + held > self.budget.capacity // 4:
                raise JobLimitError("the server's job queue is full; retry later")
            self._job_bytes += held
        try:
            self.budget.take(held, "a queued inference job")
        except BaseException:
            self._release_job_bytes(held, charged=False)
            raise
        try:
            return self.jobs.submit(self._tenant(caller), key_id, "infer",
                                    lambda report: self.infer(caller, key_id, probe, report),
                                    on_end=lambda: self._release_job_bytes(held))
        except BaseException:
            self._release_job_bytes(held)
            raise

    def _release_job_bytes(self, held: int, charged: bool = True) -> None:
        with self._job_bytes_lock:
            self._job_bytes -= held
        if charged:
            self.budget.give(held)

    def job(self, caller: Caller, job_id: str) -> JobView:
        return self.jobs.get(self._tenant(caller), job_id)

    def job_list(self, caller: Caller) -> list[JobView]:
        return self.jobs.list(self._tenant(caller))

    def job_result(self, caller: Caller, job_id: str) -> dict[str, Any]:
        """The ended job's result (as :meth:`infer` returns it); its error if it failed."""
        return self.jobs.result(self._tenant(caller), job_id)

    def cancel_job(self, caller: Caller, job_id: str) -> JobView:
        return self.jobs.cancel(self._tenant(caller), job_id)

    def delete_job(self, caller: Caller, job_id: str) -> None:
        self.jobs.delete(self._tenant(caller), job_id)

    def _normalised(self, state: _KeySetState, probe: Probe, extra_levels: int) -> tuple[Any, int]:
        """(normalised template, stride recorded with it): normalised here from images or a raw template, or as
        the client normalised it (refresh protocol)."""
        if probe.get("normalised"):
            return self._fresh_template(state, probe, extra_levels)
        ct, layout = self._template_from_probe(state, probe)
        need = hm.normalise_levels(layout) + extra_levels
        level = state.backend.level(ct)
        if level < need:
            raise CiphertextError(f"the template is at level {level}; normalising and scoring it needs {need} levels")
        return hm.normalise(state.backend, ct, layout), int(layout.stride)

    def _new_templates(self, record: KeySetRecord, probes: Sequence[Probe]) -> list[NewTemplate]:
        """Normalise each encrypted template (or infer it from images), ready to store."""
        if not probes:
            raise ServiceInputError("nothing to enrol")
        new = []
        with self._serving(record, heavy=_has_images(probes)) as state, state.lock:
            for probe in probes:
                ct, stride = self._normalised(state, probe, LEVELS.score)
                be = state.backend
                new.append(NewTemplate(be.serialize(ct), be.level(ct), stride, self.model_id, state.params_id))
        return new

    def create_subject(self, caller: Caller, key_id: str, subject: str,
                       probes: Sequence[Probe]) -> SubjectRecord:
        """A new subject with its first templates, all or nothing; ConflictError if the name is enrolled."""
        subject = validate_name(subject, "subject")
        record = self._active(caller, key_id, probes)
        if len(probes) > MAX_TEMPLATES_PER_SUBJECT:
            raise TemplateCapError(f"a subject holds at most {MAX_TEMPLATES_PER_SUBJECT} templates")
        if any(s.name == subject for s in self.store.subjects(key_id)):
            raise ConflictError("this subject is enrolled already under the key set; add templates to it instead")
        new = self._new_templates(record, probes)  # checked before this expensive step: ownership, name, state
        subject_id, _ = self.store.create_subject(self._tenant(caller), key_id, subject, new, actor=caller.actor)
        return self.store.get_subject(key_id, subject_id)

    def add_templates(self, caller: Caller, key_id: str, subject_id: int,
                      probes: Sequence[Probe]) -> SubjectRecord:
        """More templates for an existing subject, all or nothing; TemplateCapError past the cap."""
        record = self._active(caller, key_id, probes)
        current = self.store.get_subject(key_id, subject_id)
        if len(current.template_ids) + len(probes) > MAX_TEMPLATES_PER_SUBJECT:
            raise TemplateCapError(f"a subject holds at most {MAX_TEMPLATES_PER_SUBJECT} templates; it has "
                                   f"{len(current.template_ids)} and {len(probes)} more were sent")
        new = self._new_templates(record, probes)
        self.store.add_templates(self._tenant(caller), key_id, subject_id, new, MAX_TEMPLATES_PER_SUBJECT,
                                 actor=caller.actor)
        return self.store.get_subject(key_id, subject_id)

    def subjects(self, caller: Caller, key_id: str) -> list[SubjectRecord]:
        self._owned(caller, key_id)
        return self.store.subjects(key_id)

    def delete_subject(self, caller: Caller, key_id: str, subject_id: int) -> None:
        self.store.delete_subject(self._tenant(caller), key_id, subject_id, actor=caller.actor)

    def delete_template(self, caller: Caller, key_id: str, template_id: int) -> None:
        self.store.delete_template(self._tenant(caller), key_id, template_id, actor=caller.actor)

    # -- matching -----------------------------------------------------------------------------------
    def _check_mode(self, mode: str, template_level: int) -> int:
        if mode not in MODES:
            raise ServiceInputError(f"mode must be one of {MODES}")
        if mode == "decision":
            need = LEVELS.score + LEVELS.decision
            if template_level < need:
                raise ServiceInputError(
                    f"decision-only matching needs templates with {need} levels left, these have {template_level}; "
                    "use mode 'score', or enrol the subject with decision-ready templates (refresh protocol: "
                    "'enroll --decision-ready')"
                )
            return LEVELS.decision
        return 0

    def verify(self, caller: Caller, key_id: str, subject: str, probe: Probe, mode: str = "score") -> list[bytes]:
        """One result ciphertext per enrolled template of ``subject``: the cosine (or F(cos - tau)) in slot 0."""
        record = self._active(caller, key_id, [probe])
        records = self.store.templates(key_id, validate_name(subject, "subject"))
        extra = self._check_mode(mode, min(r.level for r in records))
        out = []
        with self._serving(record, heavy=_has_images([probe])) as state, state.lock:
            be = state.backend
            p, stride = self._normalised(state, probe, LEVELS.score + extra)
            for r in records:
                self._check_compatible(r, stride, state)
                s = hm.cosine(be, p, be.deserialize(r.ciphertext), TemplateLayout(stride))
                out.append(_answer(be, hm.decision(be, s, self.threshold) if mode == "decision" else s))
        return out

    def _check_compatible(self, r: TemplateRecord, stride: int, state: _KeySetState) -> None:
        if r.stride != stride:
            raise ServiceInputError(f"probe stride {stride} differs from the enrolled template's {r.stride}")
        if r.params_id != state.params_id:
            raise ServiceInputError("the enrolled template was made under other CKKS parameters")

    def compare(
        self, caller: Caller, key_id: str, pairs: Sequence[tuple[Probe, Probe]]
    ) -> list[tuple[bytes, list[int]]]:
        """Encrypted cosines of probe pairs, nothing enrolled: (score ciphertext, slot of each pair) per batch,
        pairs in order. Both probes of every pair must come out of the engine (or the client) in one layout."""
        if not 1 <= len(pairs) <= MAX_COMPARE_PAIRS:
            raise ServiceInputError(f"send 1 to {MAX_COMPARE_PAIRS} pairs per request, not {len(pairs)}")
        probes = [p for pair in pairs for p in pair]
        record = self._active(caller, key_id, probes)
        fresh = {bool(p.get("normalised")) for p in probes}
        if len(fresh) != 1:
            raise ServiceInputError("the probes of one compare request must be all raw or all client-normalised")
        with self._serving(record, heavy=_has_images(probes)) as state, state.lock:
            be = state.backend
            if fresh.pop():
                templates = [(self._fresh_template(state, p, LEVELS.score)[0], None) for p in probes]
            else:
                templates = [self._template_from_probe(state, p) for p in probes]
            layouts = {layout for _, layout in templates}
            if len(layouts) != 1:
                raise ServiceInputError("the probes of one compare request must share one template layout")
            cts = [ct for ct, _ in templates]
            try:
                batches = list(score_pairs(be, zip(cts[0::2], cts[1::2], strict=True), layouts.pop()))
            except ParameterError as exc:
                raise ServiceInputError(str(exc)) from exc
            return [(_answer(be, b.ciphertext), [int(i) for i in score_slots(be.slots, b.count)]) for b in batches]

    def identify(
        self, caller: Caller, key_id: str, probe: Probe, mode: str = "score"
    ) -> list[tuple[bytes, list[int], list[str]]]:
        """Score the probe against every enrolled template: (result ciphertext, score slots, subject per slot).

        Score mode with fresh templates (refresh protocol, a level to spare) scores grouped galleries: one answer
        per 16 gallery chunks (:func:`~cryptoface.match.homomorphic.grouped_gallery`; on an executor one answer per
        ``slots`` templates, :func:`~cryptoface.match.homomorphic.dense_scores`), else one answer per chunk."""
        record = self._active(caller, key_id, [probe])
        records = self.store.templates(key_id)
        if not records:
            raise ServiceInputError("no subject is enrolled under this key set")
        self._check_mode(mode, 10**9)
        from cryptoface.engine.evaluator import default_workers

        with self._serving(record, heavy=_has_images([probe])) as state, state.lock:
            be = state.backend
            p, stride = self._normalised(state, probe, LEVELS.score + self._check_mode(mode, 10**9))
            records = [r for r in records if r.stride == stride and r.model_id == self.model_id]
            if not records:
                raise ServiceInputError(f"no enrolled template has stride {stride} and model {self.model_id!r}")
            self._check_mode(mode, min(r.level for r in records))
            gallery = gallery_layout(be.slots)  # normalised templates of any input stride pack the same way
            # fresh templates carry the mask's level: grouped galleries (in process) or dense answers (sharded)
            spare = mode == "score" and min(be.level(p), min(r.level for r in records)) - LEVELS.score >= LEVELS.pack
            grouped = spare and self.executor is None
            stored = self._galleries(key_id, state, gallery, records, grouped)
            rep = hm.replicate_probe(be, p, gallery)
            names = {r.id: r.subject for r in records}
            subjects = [names[i] for _, ids in stored for i in ids]
            if grouped:
                groups = ((cts, hm.gallery_counts(len(ids), gallery, True)[0]) for cts, ids in stored)
                return self._answers(be, hm.grouped_answers(be, rep, groups, gallery, default_workers()), subjects)
            chunks = [(cts[0], ids) for cts, ids in stored]
            counts = [len(ids) for _, ids in chunks]
            tau = self.threshold if mode == "decision" else None
            if self.executor is not None:  # gallery chunks sharded over the executor's workers
                from cryptoface.engine.parallel import sharded_scores

                shards = sharded_scores(self.executor, be, self._handle(self.executor, state), rep,
                                        [c for c, _ in chunks], counts, tau)
                scores = (be.deserialize(s) for s in shards)
            else:
                scores = hm.scored_chunks(be, rep, zip([c for c, _ in chunks], counts, strict=True), gallery,
                                          default_workers())
                if tau is not None:
                    scores = (hm.decision(be, s, tau) for s in scores)
            return self._answers(be, hm.gallery_answers(be, zip(scores, counts, strict=True), gallery, spare),
                                 subjects)

    @staticmethod
    def _answers(be: CkksBackend, answers: Iterator[tuple[Any, list[int]]], subjects: list[str]
                 ) -> list[tuple[bytes, list[int], list[str]]]:
        """(answer bytes, score slots, subject of each) per answer; answers hold the chunks' scores in order."""
        out, used = [], 0
        for ct, slots in answers:
            out.append((_answer(be, ct), [int(x) for x in slots], subjects[used:used + len(slots)]))
            used += len(slots)
        if used != len(subjects):  # pragma: no cover - the scoring functions place every template once
            raise CiphertextError(f"{used} scores for {len(subjects)} templates")
        return out

    def _galleries(
        self, key_id: str, state: _KeySetState, gallery: GalleryLayout, records: list[TemplateRecord], grouped: bool
    ) -> list[tuple[list[bytes], list[int]]]:
        """The key set's galleries as (ciphertexts, template ids): packed chunks (one ciphertext each) or, with
        ``grouped``, gallery groups (``GROUP_CHUNKS`` ciphertexts of up to 16 chunks each). Stored ones are used when
        they hold exactly the enrolled templates in the wanted form; else they are built and stored, one form at a
        time (:func:`~cryptoface.match.homomorphic.gallery_rows`)."""
        ids = {r.id for r in records}
        # the store keys galleries by the enrolled templates' stride (identify keeps one stride): it checks the packed
        # ids against the templates of that stride, so the gallery layout's stride would never match and no packed
        # gallery would ever be kept
        stride = records[0].stride
        rows = [(g.ciphertext, g.template_ids) for g in self.store.galleries(key_id, stride, self.model_id)]
        form, stored = hm.stored_galleries(rows)
        current = bool(stored) and {i for _, part in stored for i in part} == ids
        if current and form == grouped:
            return stored
        from cryptoface.engine.evaluator import default_workers

        be = state.backend
        built = hm.build_galleries(be, [r.ciphertext for r in records], gallery, grouped, default_workers())
        new = hm.gallery_rows(be, built, [r.id for r in records], gallery, grouped)
        if not current:  # a current stored form of the other kind is kept: this one serves this request only
            # enrolled or deleted meanwhile: serve from this packing, the next request repacks
            with contextlib.suppress(ConflictError, UnknownKeySetError):
                self.store.replace_galleries(key_id, stride, self.model_id, new)
        return hm.stored_galleries([(c, part) for c, part, _ in new])[1]

    def info(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "model_resolution": None if self.model is None else int(self.model.resolution),
            "normalise_levels": LEVELS.normalise,
            "score_levels": LEVELS.score,
            "decision_levels": LEVELS.decision,
            "pack_levels": LEVELS.pack,
            "max_heavy": self.slots.n,
            "memory": self.budget.snapshot(),
        }


__all__ = [
    "EngineUnavailableError",
    "MatchService",
    "ServiceInputError",
    "StoreError",
]
