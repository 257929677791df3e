"""Patch-parallel inference units and sharded 1:N scoring through an executor (in process, or Ray actors).

This process is the client (keys, encryption of the units' inputs and of random gallery chunks, decryption)
and the coordinator; the executor's workers evaluate. Per-unit seconds, per-request overhead, object-store
transfer times and seconds per gallery chunk are what ``scripts/project_scaleout.py`` projects from.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cryptoface.bench.inference import (
    BenchHeader,
    InferenceOptions,
    bench_parameters,
    cost_model_name,
    header_fields,
)
from cryptoface.bench.memory import drop_client_rotation_keys, peak_rss_bytes
from cryptoface.bench.report import OPTIONAL, Report
from cryptoface.match.layout import EMBEDDING_DIM, GalleryLayout

DEFAULT_TRANSFER_SIZES = (262144, 4194304, 33554432)


@dataclass(frozen=True, kw_only=True)
class ScaleoutOptions(InferenceOptions):
    """``cryptoface bench --executor``: ``workers`` is the number of Ray actors (local: engine threads)."""

    executor: str = "local"
    ray_address: str | None = None  # None: start a local Ray with num_cpus = workers
    gallery: int = 0  # templates of the 1:N benchmark (0: none)
    gallery_only: bool = False
    transfer_sizes: tuple[int, ...] = DEFAULT_TRANSFER_SIZES  # Ray object-store round-trip payloads


@dataclass(kw_only=True)
class GalleryShardReport(Report):
    """1:N through the executor: random unit templates in packed chunks, one probe, scores vs clear."""

    templates: int
    chunks: int
    capacity: int
    level: int
    chunk_bytes: int
    score_bytes: int
    encrypt_s: float
    runs: list[dict[str, Any]]
    wall_s_median: float
    seconds_per_chunk: float  # the critical path's seconds per chunk on one worker
    score_max_abs_error: float


@dataclass(kw_only=True)
class ScaleoutReport(BenchHeader):
    """Units (with ``gallery_only`` absent) and 1:N (with ``gallery``) through one executor."""

    unit_costs: dict[str, Any]
    executor: str
    workers: int
    ray_address: str | None
    threads: int
    keygen_s: float
    rotation_keys: int
    engine_workers: int | str
    key_put_s: float
    key_load: list[dict[str, Any]]
    model: str | None = field(default=None, metadata=OPTIONAL)
    input: str | None = field(default=None, metadata=OPTIONAL)
    runs: list[dict[str, Any]] | None = field(default=None, metadata=OPTIONAL)
    units: int | None = field(default=None, metadata=OPTIONAL)
    infer_s_median: float | None = field(default=None, metadata=OPTIONAL)
    unit_compute_s_median: float | None = field(default=None, metadata=OPTIONAL)
    unit_compute_s: list[list[float]] | None = field(default=None, metadata=OPTIONAL)
    ray_overhead_s_median: float | None = field(default=None, metadata=OPTIONAL)
    request_overhead: dict[str, float] | None = field(default=None, metadata=OPTIONAL)
    upload_bytes: int | None = field(default=None, metadata=OPTIONAL)
    partial_bytes: int | None = field(default=None, metadata=OPTIONAL)
    max_abs_error: float | None = field(default=None, metadata=OPTIONAL)
    rel_error: float | None = field(default=None, metadata=OPTIONAL)
    gallery: GalleryShardReport | None = field(default=None, metadata=OPTIONAL)
    ray_transfer: list[dict[str, float]] | None = field(default=None, metadata=OPTIONAL)
    worker_stats: list[dict[str, Any]] | None = field(default=None, metadata=OPTIONAL)
    key_puts: int | None = field(default=None, metadata=OPTIONAL)
    resubmissions: int | None = field(default=None, metadata=OPTIONAL)
    peak_rss_bytes: int

    def summary(self) -> dict[str, Any]:
        """The figures the CLI prints."""
        out = {k: getattr(self, k) for k in ("executor", "workers", "keygen_s", "infer_s_median",
                                             "unit_compute_s_median", "ray_overhead_s_median", "rel_error")}
        if self.gallery is not None:
            out["gallery_wall_s_median"] = self.gallery.wall_s_median
            out["gallery_seconds_per_chunk"] = self.gallery.seconds_per_chunk
        return out


def run_scaleout(options: ScaleoutOptions, *, progress: bool = False) -> ScaleoutReport:
    """Units and/or 1:N through ``options.executor`` (``progress``: a line per run on stderr)."""
    from cryptoface.backends import create_backend
    from cryptoface.engine.executor import create_executor
    from cryptoface.engine.layout import TemplateLayout
    from cryptoface.engine.linear import COST_MODELS
    from cryptoface.engine.units import unit_costs, unit_rotation_steps
    from cryptoface.match import homomorphic as hm

    params = bench_parameters(options)
    cost_name = cost_model_name(options)
    costs = {**unit_costs(options.resolution, params.slots, params.levels, COST_MODELS[cost_name]),
             "cost_model": cost_name}
    ray = options.executor == "ray"
    actors = options.workers or 1
    backend = create_backend(options.backend, params, threads=options.threads)
    steps: set[int] = set()
    if not options.gallery_only:
        steps |= set(unit_rotation_steps(params.slots, params.levels))
    if options.gallery:
        steps |= set(hm.rotation_steps(TemplateLayout(1, params.slots // EMBEDDING_DIM), params.slots))
    t0 = time.perf_counter()
    backend.generate_keys(steps)
    keygen_s = time.perf_counter() - t0
    if ray:
        init = {"num_cpus": actors} if options.ray_address is None else {}
        executor = create_executor("ray", actors, options.ray_address, init_kwargs=init)
    else:
        executor = create_executor("local", engine_workers=options.workers)
    fields: dict[str, Any] = {}
    try:
        t0 = time.perf_counter()
        keys = executor.keys("bench", options.backend, params, backend=backend)
        key_put_s = time.perf_counter() - t0
        if ray and not options.gallery:
            # the driver only encrypts and decrypts from here on (with a gallery it also replicates the probe);
            # full-size OpenFHE keys in the driver, the object store and two actors would not fit 24 GB
            drop_client_rotation_keys(backend)
        key_load = executor.preload(keys)
        if not options.gallery_only:
            fields.update(_bench_units(options, backend, executor, keys, progress))
        if options.gallery:
            fields["gallery"] = _bench_gallery(options, backend, executor, keys, actors if ray else 1, progress)
        if ray:
            fields.update(ray_transfer=[executor.transfer_seconds(n) for n in options.transfer_sizes],
                          worker_stats=executor.stats(), key_puts=executor.key_puts,
                          resubmissions=executor.resubmissions)
    finally:
        executor.close()
    return ScaleoutReport(
        **header_fields(options, params), unit_costs=costs, executor=options.executor, workers=actors if ray else 1,
        ray_address=options.ray_address, threads=options.threads, keygen_s=keygen_s, rotation_keys=len(steps),
        engine_workers=1 if ray else (executor.worker.engine_workers or "default"), key_put_s=key_put_s,
        key_load=key_load, **fields, peak_rss_bytes=peak_rss_bytes(),
    )


def _bench_units(options: ScaleoutOptions, backend: Any, executor: Any, keys: Any, progress: bool
                 ) -> dict[str, Any]:
    """The :class:`ScaleoutReport` fields of the unit runs; medians over warm runs (all but the first)."""
    from cryptoface.bench.inputs import bench_face, bench_model
    from cryptoface.engine import decrypt_embedding
    from cryptoface.engine.parallel import PatchParallelEngine
    from cryptoface.engine.units import encrypt_units, unit_plan
    from cryptoface.model.reference import forward

    model, model_name = bench_model(options.model, options.resolution, options.seed)
    engine = PatchParallelEngine(executor, model)
    x, input_name = bench_face(options.resolution, options.photo, options.random_input, options.seed)
    ref = forward(model, x)
    plan = unit_plan(backend.slots, backend.params.levels)
    runs = []
    for i in range(max(1, options.runs)):
        t0 = time.perf_counter()
        cts = encrypt_units(backend, x)
        enc_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        out, _ = engine.infer(backend, keys, cts)
        infer_s = time.perf_counter() - t0
        err = float(np.max(np.abs(decrypt_embedding(backend, plan, model, out) - ref)))
        runs.append({"run": i, "encrypt_s": enc_s, "infer_s": infer_s, "max_abs_error": err,
                     "rel_error": err / float(np.max(np.abs(ref))), "output_level": backend.level(out),
                     **engine.last_report})
        if progress:
            print(f"run {i}: inference {infer_s:.1f} s over {len(cts)} units, max abs error {err:.3g}",
                  file=sys.stderr)
    warm = runs[1:] or runs  # the first request also fills the workers' caches (plan structures, keys, weights)
    out_fields: dict[str, Any] = {
        "model": model_name, "input": input_name, "runs": runs, "units": len(runs[0]["units"]),
        "infer_s_median": statistics.median(r["infer_s"] for r in warm),
        "unit_compute_s_median": statistics.median(u["compute_s"] for r in warm for u in r["units"]),
        "unit_compute_s": [[u["compute_s"] for u in r["units"]] for r in runs],
    }
    if options.executor == "ray":
        out_fields["ray_overhead_s_median"] = statistics.median(r["ray_overhead_s"] for r in warm)
    out_fields.update(
        request_overhead={k: statistics.median(r[k] for r in warm)
                          for k in ("serialize_inputs_s", "deserialize_partials_s", "combine_s")},
        upload_bytes=runs[0]["input_bytes"], partial_bytes=runs[0]["partial_bytes"],
        max_abs_error=max(r["max_abs_error"] for r in runs), rel_error=max(r["rel_error"] for r in runs),
    )
    return out_fields


def _unit_chunks(rng: np.random.Generator, total: int, capacity: int) -> Iterator[np.ndarray]:
    """``total`` random unit templates in chunks of ``capacity``."""
    for start in range(0, total, capacity):
        e = rng.standard_normal((min(capacity, total - start), EMBEDDING_DIM))
        yield e / np.linalg.norm(e, axis=1, keepdims=True)


def _random_gallery(seed: int, total: int, capacity: int) -> tuple[Iterator[np.ndarray], np.ndarray]:
    """(the gallery's chunks, the probe): the probe is the unit vector drawn after the whole gallery, so the
    chunks are drawn again (same seed) rather than held in memory."""
    rng = np.random.default_rng(seed + 7)
    for _ in _unit_chunks(rng, total, capacity):
        pass
    probe = rng.standard_normal(EMBEDDING_DIM)
    return _unit_chunks(np.random.default_rng(seed + 7), total, capacity), probe / np.linalg.norm(probe)


def _bench_gallery(options: ScaleoutOptions, backend: Any, executor: Any, keys: Any, workers: int,
                   progress: bool) -> GalleryShardReport:
    """Encrypt the gallery chunks at a normalised template's level, score one probe ``runs`` times."""
    from cryptoface.engine.parallel import sharded_scores
    from cryptoface.match import homomorphic as hm
    from cryptoface.match.layout import gallery_layout, normalised_layout, pack_gallery_slots
    from cryptoface.params import LEVELS

    params = backend.params
    reserve = params.levels - LEVELS.network_levels(options.resolution)
    # enrolled templates' level: what the server's normalisation leaves on one-round parameters, else the client's
    # fresh template's (refresh)
    level = reserve - LEVELS.normalise if reserve >= LEVELS.matching_reserve else LEVELS.fresh_template("score")
    gal: GalleryLayout = gallery_layout(params.slots)
    chunks, counts = [], []
    t0 = time.perf_counter()
    gallery, probe = _random_gallery(options.seed, options.gallery, gal.capacity)
    for e in gallery:
        chunks.append(backend.serialize(backend.encrypt(pack_gallery_slots(e, gal), level)))
        counts.append(len(e))
    enc_s = time.perf_counter() - t0
    rep = hm.replicate_probe(backend, backend.encrypt(normalised_layout(params.slots).pack(probe, params.slots),
                                                      level), gal)
    runs = []
    for i in range(max(1, options.runs)):
        t0 = time.perf_counter()
        scores = sharded_scores(executor, backend, keys, rep, chunks, counts)
        wall = time.perf_counter() - t0
        runs.append({"run": i, "wall_s": wall, **executor.last_report})
        if progress:
            print(f"1:N run {i}: {options.gallery} templates in {len(chunks)} chunks, {wall:.2f} s", file=sys.stderr)
    got = np.concatenate([backend.decrypt(backend.deserialize(s))[gal.score_slots(n)]
                          for s, n in zip(scores, counts, strict=True)])
    clear = np.concatenate([e @ probe for e in _random_gallery(options.seed, options.gallery, gal.capacity)[0]])
    return GalleryShardReport(
        templates=options.gallery, chunks=len(chunks), capacity=gal.capacity, level=level,
        chunk_bytes=len(chunks[0]), score_bytes=len(scores[0]), encrypt_s=enc_s, runs=runs,
        wall_s_median=statistics.median(r["wall_s"] for r in runs),
        seconds_per_chunk=statistics.median(r.get("critical_path_s", r["wall_s"]) for r in runs)
        * min(workers, len(chunks)) / len(chunks),
        score_max_abs_error=float(np.max(np.abs(got - clear))),
    )
