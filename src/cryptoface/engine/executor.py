"""Executors: where patch-parallel work units (:mod:`cryptoface.engine.units`) and 1:N gallery shards run.

One worker class, :class:`UnitWorker`, does the work; an executor decides where workers live:

* :class:`LocalExecutor` — one worker in this process, units run one after the other;
* :class:`RayExecutor` — ``workers`` long-lived Ray actors (one CPU each), units and gallery shards spread
  over them, ciphertexts passed as bytes through Ray's object store.

Everything a worker caches travels as a :class:`Handle`: an id plus the payload (local) or a Ray
``ObjectRef`` to it (put into the object store **once** by the executor). A worker resolves the reference
only when it lacks the id, so a key set (GBs on real backends) or a unit's weights cross to an actor once per
actor, never per request; the executor counts its puts (``key_puts``) and every worker counts its loads
(``stats()["key_loads"]``), which the tests check.

Faults: actors are created with ``max_restarts=-1`` (Ray restarts a dead actor, which starts with empty caches
and reloads keys and weights from the object store on its next call) and ``max_task_retries=0``; the executor
itself resubmits a call whose actor died to the next actor (``retries`` times, counted in ``resubmissions``),
so a worker lost mid-request costs time, not the request.

Workers hold public/evaluation keys only (``from_public_keys``); nothing here decrypts.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cryptoface.backends.protocol import CkksParameters
from cryptoface.model.fused import FusedModel


@dataclass(frozen=True)
class Handle:
    """A cacheable payload named by ``id``: ``ref`` is the payload (local) or a Ray ObjectRef to it."""

    id: str
    ref: Any = field(compare=False, repr=False)


@dataclass
class KeySet:
    """What a worker needs to evaluate under a client's keys (never a secret key)."""

    backend: str
    params: CkksParameters
    keys: dict[str, bytes] | None = None
    instance: Any = None  # local executor only: an existing server backend, used as is


def model_digest(model: FusedModel) -> str:
    """Content id of a fused model (weights and bias), for worker caches."""
    h = hashlib.sha256(f"{model.architecture}:{model.resolution}".encode())
    for net in model.patches:
        for arr in _arrays(net):
            h.update(np.ascontiguousarray(arr, dtype=np.float64).tobytes())
    h.update(np.ascontiguousarray(model.bias, dtype=np.float64).tobytes())
    return h.hexdigest()[:16]


def _arrays(obj: Any) -> list[np.ndarray]:
    import dataclasses

    if isinstance(obj, np.ndarray):
        return [obj]
    if dataclasses.is_dataclass(obj):
        return [a for f in dataclasses.fields(obj) for a in _arrays(getattr(obj, f.name))]
    if isinstance(obj, tuple):
        return [a for o in obj for a in _arrays(o)]
    return []


def _resolve(ref: Any) -> Any:
    ray = sys.modules.get("ray")
    if ray is not None and isinstance(ref, ray.ObjectRef):
        return ray.get(ref)
    return ref


class UnitWorker:
    """Runs units and gallery shards; caches server backends, unit models and gallery chunks by id."""

    def __init__(self, name: str = "local", key_cache: int = 4, chunk_cache: int = 100_000,
                 engine_workers: int | None = 1) -> None:
        self.name = name
        # Engine threads per unit: a Ray actor owns one CPU, so 1 there; None = the engine's default for
        # the backend (two on a thread-safe backend with two CPUs, else one).
        self.engine_workers = engine_workers
        self.pid = os.getpid()
        self._backends: OrderedDict[str, Any] = OrderedDict()
        self._models: dict[str, FusedModel] = {}
        self._chunks: OrderedDict[str, Any] = OrderedDict()
        self._key_cache = key_cache
        self._chunk_cache = chunk_cache
        self._lock = threading.Lock()
        self.counters: Counter[str] = Counter()
        self.running = 0

    # -- caches -------------------------------------------------------------------------------------------
    def _backend(self, keys: Handle) -> Any:
        be = self._backends.get(keys.id)
        if be is not None:
            self._backends.move_to_end(keys.id)
            return be
        ks: KeySet = _resolve(keys.ref)
        self.counters["key_loads"] += 1
        if ks.instance is not None:
            be = ks.instance
        else:
            from cryptoface.backends import backend_class

            be = backend_class(ks.backend).from_public_keys(ks.params, ks.keys)
            if be.has_secret_key:  # pragma: no cover - the backends refuse this themselves
                raise ValueError("refused: these keys give the worker a secret key")
        self._backends[keys.id] = be
        while len(self._backends) > self._key_cache:
            self._backends.popitem(last=False)
        return be

    def _model(self, model: Handle) -> FusedModel:
        m = self._models.get(model.id)
        if m is None:
            m = _resolve(model.ref)
            self.counters["model_loads"] += 1
            self._models[model.id] = m
        return m

    def _chunk(self, be: Any, keys_id: str, chunk: Handle) -> Any:
        key = f"{keys_id}/{chunk.id}"
        ct = self._chunks.get(key)
        if ct is None:
            ct = be.deserialize(_resolve(chunk.ref))
            self.counters["chunk_loads"] += 1
            self._chunks[key] = ct
            while len(self._chunks) > self._chunk_cache:
                self._chunks.popitem(last=False)
        return ct

    def forget(self, key_id: str) -> None:
        self._backends.pop(key_id, None)
        for k in [k for k in self._chunks if k.startswith(f"{key_id}/")]:
            del self._chunks[k]

    # -- work ---------------------------------------------------------------------------------------------
    def run_unit(self, keys: Handle, model: Handle, cts: Sequence[bytes]) -> dict[str, Any]:
        """One unit: the partial template (serialised) of the unit's sub-model on its input ciphertexts."""
        from cryptoface.engine.evaluator import EncryptedModel
        from cryptoface.engine.units import unit_plan

        with self._lock:
            self.running += 1
            try:
                t0 = time.perf_counter()
                be = self._backend(keys)
                sub = self._model(model)
                t1 = time.perf_counter()
                inputs = [be.deserialize(c) for c in cts]
                t2 = time.perf_counter()
                em = EncryptedModel(sub, be, unit_plan(be.slots, be.params.levels), workers=self.engine_workers)
                out, _ = em.infer(inputs, progress=False)
                t3 = time.perf_counter()
                data = be.serialize(out)
                t4 = time.perf_counter()
                self.counters["units"] += 1
            finally:
                self.running -= 1
        return {"ciphertext": data, "worker": self.name, "pid": self.pid, "load_s": t1 - t0,
                "deserialize_s": t2 - t1, "compute_s": t3 - t2, "serialize_s": t4 - t3,
                "input_bytes": int(sum(len(c) for c in cts)), "output_bytes": len(data)}

    def score_chunks(self, keys: Handle, probe: bytes, chunks: Sequence[Handle], counts: Sequence[int],
                     tau: float | None = None) -> dict[str, Any]:
        """Encrypted scores of a replicated probe against each gallery chunk (decision-only when ``tau``)."""
        from cryptoface.match import homomorphic as hm
        from cryptoface.match.layout import gallery_layout

        with self._lock:
            self.running += 1
            try:
                t0 = time.perf_counter()
                be = self._backend(keys)
                p = be.deserialize(probe)
                gallery = gallery_layout(be.slots)
                cts = [self._chunk(be, keys.id, c) for c in chunks]
                t1 = time.perf_counter()
                out = []
                for ct, n in zip(cts, counts, strict=True):
                    s = hm.gallery_scores(be, p, ct, gallery, int(n))
                    if tau is not None:
                        s = hm.decision(be, s, float(tau))
                    out.append(be.serialize(s))
                t2 = time.perf_counter()
                self.counters["score_calls"] += 1
                self.counters["chunks_scored"] += len(cts)
            finally:
                self.running -= 1
        return {"scores": out, "worker": self.name, "pid": self.pid, "load_s": t1 - t0, "compute_s": t2 - t1}

    def load_keys(self, keys: Handle) -> dict[str, Any]:
        """Load a key set now, ahead of the first request; reports the seconds it took (~0 when cached)."""
        with self._lock:
            t0 = time.perf_counter()
            self._backend(keys)
            return {"worker": self.name, "pid": self.pid, "load_s": time.perf_counter() - t0}

    def echo(self, payload: Any) -> Any:
        """Returns its argument (measures object-store transfer of ciphertext-sized payloads)."""
        return payload

    def stats(self) -> dict[str, Any]:
        return {"name": self.name, "pid": self.pid, "running": self.running, **self.counters}


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:24]


class LocalExecutor:
    """Units and shards in this process, one after the other (the reference for the Ray executor)."""

    kind = "local"

    def __init__(self, engine_workers: int | None = None) -> None:
        """``engine_workers``: engine threads per unit (None: the engine's default for the backend)."""
        self.worker = UnitWorker("local", engine_workers=engine_workers)
        self.workers = 1
        self.key_puts = 0
        self.resubmissions = 0
        self.last_report: dict[str, Any] = {}

    def keys(self, key_id: str, backend_name: str, params: CkksParameters, keys: dict[str, bytes] | None = None,
             backend: Any = None) -> Handle:
        if backend is None and keys is None:
            raise ValueError("give the evaluation keys or a server backend")
        self.key_puts += 1
        return Handle(key_id, KeySet(backend_name, params, keys, backend))

    def model(self, model: FusedModel, model_id: str | None = None) -> list[Handle]:
        from cryptoface.engine.units import unit_models

        mid = model_id or model_digest(model)
        return [Handle(f"{mid}/unit{i}", m) for i, m in enumerate(unit_models(model))]

    def chunks(self, data: Sequence[bytes]) -> list[Handle]:
        return [Handle(_digest(d), d) for d in data]

    def run_units(self, keys: Handle, models: Sequence[Handle], inputs: Sequence[Sequence[bytes]]) -> list[dict]:
        t0 = time.perf_counter()
        out = [self.worker.run_unit(keys, m, c) for m, c in zip(models, inputs, strict=True)]
        self.last_report = {"executor": "local", "workers": 1, "wall_s": time.perf_counter() - t0}
        return out

    def score(self, keys: Handle, probe: bytes, chunks: Sequence[Handle], counts: Sequence[int],
              tau: float | None = None) -> list[bytes]:
        t0 = time.perf_counter()
        r = self.worker.score_chunks(keys, probe, chunks, counts, tau)
        self.last_report = {"executor": "local", "workers": 1, "shards": 1, "wall_s": time.perf_counter() - t0,
                            "critical_path_s": r["load_s"] + r["compute_s"]}
        return r["scores"]

    def preload(self, keys: Handle) -> list[dict[str, Any]]:
        """Load ``keys`` in the in-process worker now."""
        return [self.worker.load_keys(keys)]

    def forget(self, key_id: str) -> None:
        self.worker.forget(key_id)

    def stats(self) -> list[dict[str, Any]]:
        return [self.worker.stats()]

    def close(self) -> None:
        pass


class RayExecutor:
    """``workers`` Ray actors; keys, unit weights and gallery chunks put into the object store once.

    ``address``: None starts (or reuses) a local Ray instance, "auto" or "ray://..." joins a cluster.
    """

    kind = "ray"

    def __init__(self, workers: int = 2, *, address: str | None = None, retries: int = 5,
                 num_cpus_per_worker: float = 1.0, init_kwargs: dict[str, Any] | None = None) -> None:
        try:
            import ray
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("the Ray executor needs ray: pip install 'cryptoface[ray]'") from exc
        self._ray = ray
        self._owns_ray = False
        if not ray.is_initialized():
            kw = {"include_dashboard": False, "logging_level": "warning", **(init_kwargs or {})}
            if address is not None:
                kw["address"] = address
            ray.init(**kw)
            self._owns_ray = True
        self.workers = max(1, int(workers))
        self.retries = int(retries)
        actor = ray.remote(UnitWorker).options(num_cpus=num_cpus_per_worker, max_restarts=-1, max_task_retries=0,
                                               max_concurrency=2)
        self.actors = [actor.remote(f"worker{i}") for i in range(self.workers)]
        self._keys: dict[str, Handle] = {}
        self._models: dict[str, list[Handle]] = {}
        self._chunks: OrderedDict[str, Handle] = OrderedDict()
        self._chunk_refs_max = 200_000
        self.key_puts = 0
        self.model_puts = 0
        self.chunk_puts = 0
        self.resubmissions = 0
        self._next = 0
        self.last_report: dict[str, Any] = {}
        self._dead_errors: tuple[type[BaseException], ...] = tuple(
            e for e in (getattr(ray.exceptions, "RayActorError", None),
                        getattr(ray.exceptions, "ActorUnavailableError", None)) if e is not None)

    # -- payloads -----------------------------------------------------------------------------------------
    def keys(self, key_id: str, backend_name: str, params: CkksParameters, keys: dict[str, bytes] | None = None,
             backend: Any = None) -> Handle:
        """The handle of a key set, put into the object store the first time ``key_id`` is seen."""
        h = self._keys.get(key_id)
        if h is None:
            if keys is None:
                if backend is None:
                    raise ValueError("give the evaluation keys or a backend to export them from")
                keys = backend.export_evaluation_keys()
            h = Handle(key_id, self._ray.put(KeySet(backend_name, params, dict(keys))))
            self.key_puts += 1
            self._keys[key_id] = h
        return h

    def model(self, model: FusedModel, model_id: str | None = None) -> list[Handle]:
        from cryptoface.engine.units import unit_models

        mid = model_id or model_digest(model)
        hs = self._models.get(mid)
        if hs is None:
            hs = [Handle(f"{mid}/unit{i}", self._ray.put(m)) for i, m in enumerate(unit_models(model))]
            self.model_puts += len(hs)
            self._models[mid] = hs
        return hs

    def chunks(self, data: Sequence[bytes]) -> list[Handle]:
        out = []
        for d in data:
            cid = _digest(d)
            h = self._chunks.get(cid)
            if h is None:
                h = Handle(cid, self._ray.put(d))
                self.chunk_puts += 1
                self._chunks[cid] = h
                while len(self._chunks) > self._chunk_refs_max:
                    self._chunks.popitem(last=False)
            else:
                self._chunks.move_to_end(cid)
            out.append(h)
        return out

    def preload(self, keys: Handle) -> list[dict[str, Any]]:
        """Every actor loads ``keys`` now, one actor after another.

        One at a time because an actor briefly holds the serialised keys and the loaded ones together (twice
        the key bytes); all at once, full-size OpenFHE keys for two actors overrun a 24 GB machine.
        """
        return [self._same_actor(i, "load_keys", keys, timeout_s=600.0) for i in range(self.workers)]

    def forget(self, key_id: str) -> None:
        """Drop a key set (its keys changed): actors reload it under the new handle on their next call."""
        self._keys.pop(key_id, None)
        for i in range(self.workers):
            self._same_actor(i, "forget", key_id)

    # -- calls --------------------------------------------------------------------------------------------
    def _gather(self, calls: list[tuple[int, str, tuple]]) -> list[Any]:
        """Submit every call at once, then collect in order; a call whose actor died goes to the next actor."""
        ray = self._ray
        refs = [getattr(self.actors[i], m).remote(*a) for i, m, a in calls]
        out = []
        for (i, m, a), ref in zip(calls, refs, strict=True):
            attempt = 0
            while True:
                try:
                    out.append(ray.get(ref))
                    break
                except self._dead_errors:
                    attempt += 1
                    if attempt > self.retries:
                        raise
                    self.resubmissions += 1
                    time.sleep(min(2.0, 0.2 * attempt))  # a restarting actor refuses calls for a moment
                    ref = getattr(self.actors[(i + attempt) % self.workers], m).remote(*a)
        return out

    def _same_actor(self, i: int, method: str, *args: Any, timeout_s: float = 120.0) -> Any:
        """A call that must reach actor ``i`` itself (waits while Ray restarts it)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return self._ray.get(getattr(self.actors[i], method).remote(*args))
            except self._dead_errors:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def run_units(self, keys: Handle, models: Sequence[Handle], inputs: Sequence[Sequence[bytes]]) -> list[dict]:
        """Unit ``u`` on actor ``(first + u) mod workers``; inputs put into the object store by the caller's process."""
        ray = self._ray
        t0 = time.perf_counter()
        refs = [ray.put(list(c)) for c in inputs]
        put_s = time.perf_counter() - t0
        resub = self.resubmissions
        first = self._next  # consecutive requests start on different actors (Net4: one unit per request)
        self._next = (self._next + len(models)) % self.workers
        out = self._gather([((first + u) % self.workers, "run_unit", (keys, m, r)) for u, (m, r) in enumerate(
            zip(models, refs, strict=True))])
        wall = time.perf_counter() - t0
        per_worker: dict[int, float] = {}
        for r in out:
            per_worker[r["pid"]] = per_worker.get(r["pid"], 0.0) + r["load_s"] + r["deserialize_s"] + \
                r["compute_s"] + r["serialize_s"]
        critical = max(per_worker.values())
        self.last_report = {"executor": "ray", "workers": self.workers, "wall_s": wall, "put_s": put_s,
                            "critical_path_s": critical, "ray_overhead_s": wall - critical,
                            "resubmissions": self.resubmissions - resub}
        return out

    def score(self, keys: Handle, probe: bytes, chunks: Sequence[Handle], counts: Sequence[int],
              tau: float | None = None) -> list[bytes]:
        """Gallery chunks in ``workers`` contiguous shards, one call per actor; scores back in chunk order."""
        if not chunks:
            return []
        ray = self._ray
        t0 = time.perf_counter()
        probe_ref = ray.put(probe)  # one copy in the object store, read by every shard
        k = min(self.workers, len(chunks))
        bounds = [round(i * len(chunks) / k) for i in range(k + 1)]
        calls = [(i, "score_chunks", (keys, probe_ref, list(chunks[bounds[i]:bounds[i + 1]]),
                                      list(counts[bounds[i]:bounds[i + 1]]), tau)) for i in range(k)]
        resub = self.resubmissions
        parts = self._gather(calls)
        wall = time.perf_counter() - t0
        critical = max(p["load_s"] + p["compute_s"] for p in parts)
        self.last_report = {"executor": "ray", "workers": self.workers, "shards": k, "wall_s": wall,
                            "critical_path_s": critical, "ray_overhead_s": wall - critical,
                            "resubmissions": self.resubmissions - resub}
        return [s for p in parts for s in p["scores"]]

    def transfer_seconds(self, nbytes: int, repeats: int = 5) -> dict[str, float]:
        """Round trip of an ``nbytes`` payload driver -> actor 0 -> driver through the object store (median)."""
        ray = self._ray
        payload = os.urandom(int(nbytes))
        ray.get(self.actors[0].echo.remote(b"warm"))
        times = []
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            back = ray.get(self.actors[0].echo.remote(ray.put(payload)))
            times.append(time.perf_counter() - t0)
            assert len(back) == len(payload)
        t0 = time.perf_counter()
        for _ in range(max(1, repeats)):
            ray.get(self.actors[0].echo.remote(b"x"))
        empty = (time.perf_counter() - t0) / max(1, repeats)
        return {"payload_bytes": int(nbytes), "round_trip_s": float(np.median(times)), "empty_call_s": empty}

    def stats(self) -> list[dict[str, Any]]:
        """Each actor's counters (an actor being restarted is waited for; its counters start again at 0)."""
        return [self._same_actor(i, "stats") for i in range(self.workers)]

    def close(self) -> None:
        for a in self.actors:
            self._ray.kill(a, no_restart=True)
        self.actors = []
        if self._owns_ray:
            self._ray.shutdown()


def create_executor(kind: str, workers: int = 1, address: str | None = None, **kw: Any) -> LocalExecutor | RayExecutor:
    """``local`` or ``ray`` (``address``: None starts a local Ray, "auto" / an address joins a cluster)."""
    if kind == "local":
        return LocalExecutor(engine_workers=kw.get("engine_workers"))
    if kind == "ray":
        return RayExecutor(workers, address=address, **kw)
    raise ValueError(f"unknown executor {kind!r}; choose local or ray")


__all__ = ["Handle", "KeySet", "LocalExecutor", "RayExecutor", "UnitWorker", "create_executor", "model_digest"]
