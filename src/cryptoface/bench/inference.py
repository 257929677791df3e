"""Encrypted CryptoFaceNet inference on one backend, in one process: the plan's counts, then timed runs.

This process is both client (keys with exactly the plan's rotation steps, input encryption, template
decryption) and server (the engine on the same backend); the error is against the model's numpy forward.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cryptoface.bench.memory import peak_rss_bytes
from cryptoface.bench.profiling import ProfileReport, profile_report, start_profile
from cryptoface.bench.report import OPTIONAL, Report, bytes_by_kind, params_summary
from cryptoface.engine.layout import DEFAULT_FAMILY
from cryptoface.errors import ParameterError


@dataclass(frozen=True, kw_only=True)
class InferenceOptions:
    """What ``cryptoface bench`` measures (one field per flag of the monolithic and plan-only runs)."""

    resolution: int = 64
    backend: str = "simulator"
    protocol: str = "refresh"  # whose parameters: refresh (Net4: the trunk's levels) or one-round (+ matching's)
    model: Path | None = None  # None: the bundled model at this resolution, else a random one
    runs: int = 3
    workers: int | None = None  # engine threads; None: the engine's default for the backend
    threads: int = 1  # the backend's own threads
    family: str = DEFAULT_FAMILY
    key_mode: str = "pow2"
    cost_model: str | None = None  # None: the backend's own, desilofhe's for the simulator
    seed: int = 0
    photo: Path | None = None  # None: the bundled obama3.jpg
    random_input: bool = False
    profile: bool = False  # the first run under cProfile (one engine thread)
    device: str = "cpu"  # "gpu": desilofhe's CUDA mode
    keep_plaintexts: bool | None = None  # None: on a GPU only (a Net4's full plaintexts are ~51 GB)
    plaintext_budget_gb: float | None = None  # None: 60 % of the GPU's memory, or 8 GB on the CPU


@dataclass(kw_only=True)
class BenchHeader(Report):
    """What every ``cryptoface bench`` report starts with."""

    resolution: int
    backend: str
    protocol: str
    family: str
    key_mode: str
    params: dict[str, int]


@dataclass(kw_only=True)
class PlanSummary(Report):
    """The plan's counts: per-layer table, totals, rotation keys and their estimated bytes."""

    cost_model: str
    totals: dict[str, Any]
    layers: list[dict[str, Any]]
    rotation_keys: list[int]
    template_stride: int | None  # None with a clear tail: the output is the last block's, not a template
    key_bytes_estimate: int
    clear_tail: bool = False  # the server stops after the last block; the client does the pool quadratic and head


@dataclass(kw_only=True)
class PlanReport(BenchHeader):
    """``bench --plan-only``: the plan, nothing encrypted."""

    plan: PlanSummary


@dataclass(kw_only=True)
class InferenceRun(Report):
    """One encrypted inference: client encryption, server evaluation, error of the decrypted template."""

    run: int
    encrypt_s: float
    upload_bytes: int
    infer_s: float
    max_abs_error: float
    rel_error: float
    output_level: int
    layers: list[dict[str, Any]]


@dataclass(kw_only=True)
class MemoryReport(Report):
    """Where the memory of a run goes: evaluation keys (serialised bytes: what a server holds), the kept weight
    plaintexts, the device's peak use and the working set (that peak less the keys, the plaintexts and what was
    in use before the backend started); device figures are None on the CPU."""

    key_bytes: int
    plaintexts: dict[str, Any] | None
    device: dict[str, Any] | None
    device_baseline_bytes: int | None
    device_peak_bytes: int | None
    working_set_bytes: int | None
    peak_rss_bytes: int


@dataclass(kw_only=True)
class InferenceReport(PlanReport):
    """Timed encrypted inferences; medians over runs, errors the worst run's."""

    model: str
    threads: int
    device: str
    keygen_s: float
    evaluation_key_bytes: dict[str, Any]  # per key kind, or {"error": ...} where a backend cannot export
    workers: int
    input: str
    profile: ProfileReport | None = field(default=None, metadata=OPTIONAL)
    prepare_s: float | None = field(default=None, metadata=OPTIONAL)  # first inference, filling the cache
    runs: list[InferenceRun]
    encrypt_s: float
    upload_bytes: int
    infer_s_median: float
    max_abs_error: float
    rel_error: float
    peak_rss_bytes: int
    memory: MemoryReport

    def summary(self) -> dict[str, Any]:
        """The figures the CLI prints."""
        out = {k: getattr(self, k) for k in ("keygen_s", "prepare_s", "encrypt_s", "upload_bytes", "infer_s_median",
                                             "max_abs_error", "rel_error", "peak_rss_bytes")}
        out["device_peak_bytes"] = self.memory.device_peak_bytes
        return out


def cost_model_name(options: InferenceOptions) -> str:
    """The op costs the plan is priced with: the option, else the backend's own, else desilofhe's."""
    from cryptoface.engine.linear import COST_MODELS

    return options.cost_model or (options.backend if options.backend in COST_MODELS else "desilofhe")


def bench_parameters(options: InferenceOptions) -> Any:
    """The CKKS parameters of the benchmark (the 128-bit defaults for the resolution and protocol)."""
    from cryptoface.params import default_parameters

    return default_parameters(options.resolution, protocol=options.protocol)


def header_fields(options: InferenceOptions, params: Any) -> dict[str, Any]:
    """The :class:`BenchHeader` fields of a run with these options."""
    return {"resolution": options.resolution, "backend": options.backend, "protocol": options.protocol,
            "family": options.family, "key_mode": options.key_mode, "params": params_summary(params)}


def build_bench_plan(options: InferenceOptions) -> tuple[Any, Any, PlanSummary]:
    """(parameters, plan, its summary): the plan the options select on the default parameters, with the levels
    those keep beyond the network's reserved, priced with :func:`cost_model_name`'s op costs."""
    from cryptoface.engine.linear import COST_MODELS
    from cryptoface.engine.plan import plan_for_levels
    from cryptoface.params import switching_key_bytes

    params = bench_parameters(options)
    name = cost_model_name(options)
    plan = plan_for_levels(options.resolution, params.slots, params.levels, family=options.family,
                           key_mode=options.key_mode, cost_model=COST_MODELS[name])
    summary = PlanSummary(cost_model=name, totals=plan.totals(), layers=plan.table(),
                          rotation_keys=sorted(plan.rotation_keys),
                          template_stride=None if plan.template is None else plan.template.stride,
                          key_bytes_estimate=len(plan.rotation_keys) * switching_key_bytes(params),
                          clear_tail=plan.clear_tail)
    return params, plan, summary


def plan_report(options: InferenceOptions) -> PlanReport:
    """``bench --plan-only``: the plan's counts, nothing encrypted."""
    params, _, summary = build_bench_plan(options)
    return PlanReport(**header_fields(options, params), plan=summary)


def plaintext_cache(options: InferenceOptions) -> Any:
    """The weight-plaintext cache the options ask for (None: encode per inference)."""
    from cryptoface.engine.plaintexts import new_cache

    gb = options.plaintext_budget_gb
    return new_cache(options.device, options.keep_plaintexts, None if gb is None else int(gb * 1e9))


def _evaluation_key_bytes(backend: Any) -> dict[str, Any]:
    try:
        keys = backend.export_evaluation_keys()
    except Exception as exc:  # a backend without key export still benchmarks; the report says why
        return {"error": str(exc)}
    return bytes_by_kind({name: len(blob) for name, blob in keys.items()})


def run_inference(options: InferenceOptions, *, progress: bool = False) -> InferenceReport:
    """Time ``options.runs`` encrypted inferences of one face (``progress``: engine bar and a line per run on
    stderr). With ``profile`` the first run is profiled, which needs one engine thread."""
    from cryptoface.backends import create_backend
    from cryptoface.bench.device import DevicePeak
    from cryptoface.bench.inputs import bench_face, bench_model
    from cryptoface.engine.evaluator import EncryptedModel
    from cryptoface.gpu import device_info
    from cryptoface.model.reference import forward

    workers = options.workers
    if options.profile:  # cProfile sees only the thread that enabled it
        if workers not in (None, 1):
            raise ParameterError("--profile measures one engine thread: drop --workers or use --workers 1")
        workers = 1
    params, plan, summary = build_bench_plan(options)
    model, model_name = bench_model(options.model, options.resolution, options.seed)
    on_gpu = options.device == "gpu"
    monitor = DevicePeak() if on_gpu else None
    baseline = monitor.peak if monitor is not None else None
    with monitor or contextlib.nullcontext():
        backend = create_backend(options.backend, params, threads=options.threads, device=options.device)
        t0 = time.perf_counter()
        backend.generate_keys(plan.rotation_keys)
        keygen_s = time.perf_counter() - t0
        key_bytes = _evaluation_key_bytes(backend)
        cache = plaintext_cache(options)
        em = EncryptedModel(model, backend, plan, workers=workers, plaintexts=cache, model_id=model_name)
        x, input_name = bench_face(options.resolution, options.photo, options.random_input, options.seed)
        ref = forward(model, x)
        prepare_s = None
        if cache is not None:  # what a server does once at start: the first inference encodes and keeps
            t0 = time.perf_counter()
            em.infer(em.encrypt_input(x), progress=progress)
            prepare_s = time.perf_counter() - t0
            if progress:
                print(f"plaintexts kept: {cache.report()} ({prepare_s:.1f} s)", file=sys.stderr)
        runs, profile = _timed_runs(options, em, x, ref, progress)
    cache_report = cache.report() if cache is not None else None
    total_keys = sum(v for v in key_bytes.values() if isinstance(v, int))
    peak = monitor.peak if monitor is not None else None
    info = device_info() if on_gpu else None
    working = None
    if peak is not None and baseline is not None:
        working = peak - baseline - total_keys - (cache_report.bytes if cache_report else 0)
    memory = MemoryReport(
        key_bytes=total_keys, plaintexts=vars(cache_report) | {"bytes": cache_report.bytes} if cache_report else None,
        device=vars(info) if info is not None else None, device_baseline_bytes=baseline, device_peak_bytes=peak,
        working_set_bytes=working, peak_rss_bytes=peak_rss_bytes())
    return InferenceReport(
        **header_fields(options, params), plan=summary,
        model=model_name, threads=options.threads, device=options.device, keygen_s=keygen_s,
        evaluation_key_bytes=key_bytes, workers=em.workers, input=input_name, profile=profile, prepare_s=prepare_s,
        runs=runs, encrypt_s=statistics.median(r.encrypt_s for r in runs), upload_bytes=runs[0].upload_bytes,
        infer_s_median=statistics.median(r.infer_s for r in runs),
        max_abs_error=max(r.max_abs_error for r in runs), rel_error=max(r.rel_error for r in runs),
        peak_rss_bytes=memory.peak_rss_bytes, memory=memory,
    )


def _timed_runs(options: InferenceOptions, em: Any, x: np.ndarray, ref: np.ndarray,
                progress: bool) -> tuple[list[InferenceRun], ProfileReport | None]:
    """``options.runs`` timed encrypted inferences of ``x``, each checked against the clear ``ref``."""
    backend = em.backend
    runs: list[InferenceRun] = []
    profile: ProfileReport | None = None
    for i in range(max(1, options.runs)):
        t0 = time.perf_counter()
        cts = em.encrypt_input(x)
        enc_s = time.perf_counter() - t0
        upload = sum(len(backend.serialize(c)) for c in cts)
        profiler = start_profile() if options.profile and i == 0 else None
        t0 = time.perf_counter()
        out, _ = em.infer(cts, progress=progress)
        backend.synchronize()  # a GPU queues work: the time is the device's, not the launches'
        infer_s = time.perf_counter() - t0
        if profiler is not None:
            profile = profile_report(profiler, infer_s)
        err = float(np.max(np.abs(em.decrypt_template(out) - ref)))
        runs.append(InferenceRun(run=i, encrypt_s=enc_s, upload_bytes=upload, infer_s=infer_s, max_abs_error=err,
                                 rel_error=err / float(np.max(np.abs(ref))), output_level=backend.level(out),
                                 layers=[vars(r) for r in em.records]))
        if progress:
            print(f"run {i}: inference {infer_s:.1f} s, max abs error {err:.3g}", file=sys.stderr)
        del cts, out  # one run's ciphertexts at a time
    return runs, profile
