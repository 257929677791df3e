"""``cryptoface bench``: time encrypted CryptoFaceNet inference on one backend, or print the plan's counts."""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from cryptoface.engine.layout import DEFAULT_FAMILY, FAMILIES
from cryptoface.errors import ParameterError


def register(sub: Any) -> None:
    p = sub.add_parser("bench", help="benchmark encrypted inference (keygen, encryption, per-layer time, error)")
    p.add_argument("--resolution", type=int, choices=(64, 96, 128), default=64)
    p.add_argument("--backend", choices=("simulator", "desilofhe", "openfhe"), default="simulator")
    p.add_argument("--model", type=Path, default=None,
                   help="fused model file (default: the packaged model if present, else a random model)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--workers", type=int, default=None,
                   help="engine threads (parallel giant steps and rotations; default: one per CPU, at most 2, on "
                        "a thread-safe backend, i.e. not desilofhe); "
                        "with --executor ray the number of actors (default 1)")
    p.add_argument("--threads", type=int, default=1,
                   help="the backend's own threads (OpenFHE OpenMP threads, desilofhe thread_count)")
    p.add_argument("--family", choices=FAMILIES, default=DEFAULT_FAMILY)
    p.add_argument("--key-mode", choices=("exact", "pow2"), default="pow2")
    p.add_argument("--cost-model", choices=("desilofhe", "openfhe"), default=None,
                   help="op costs for the plan (default: the backend's, desilofhe for the simulator)")
    p.add_argument("--plan-only", action="store_true", help="print the plan's per-layer counts and exit")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--photo", type=Path, default=None,
                   help="face photo to encrypt (default: the bundled obama3.jpg; trained models are only "
                        "meaningful, and their activations only bounded, on faces)")
    p.add_argument("--random-input", action="store_true", help="encrypt uniform noise in [-1, 1] instead of a face")
    p.add_argument("--profile", action="store_true",
                   help="run the first inference (monolithic plan) under cProfile and report where its time goes "
                        "(calls by name); that run's time then includes the profiler's overhead. Implies "
                        "--workers 1 (the profiler sees one thread)")
    p.add_argument("--executor", choices=("local", "ray"), default=None,
                   help="patch-parallel units (Net4-plan groups of <= 4 patches) run by this executor; --workers is "
                        "then the number of Ray actors (local: one in-process worker). Default: the monolithic plan")
    p.add_argument("--ray-address", default=None,
                   help="join this Ray cluster ('auto' or an address; default: start a local one, num_cpus=--workers)")
    p.add_argument("--gallery", type=int, default=0,
                   help="with --executor: also score a probe against this many encrypted templates, sharded over "
                        "the workers (1:N; chunks of slots/256 templates)")
    p.add_argument("--gallery-only", action="store_true", help="with --executor: only the 1:N benchmark")
    p.add_argument("--transfer-sizes", default="262144,4194304,33554432",
                   help="with --executor ray: payload bytes of the object-store round-trip probe (comma-separated)")
    p.set_defaults(func=run)


def _load_model(args: argparse.Namespace) -> tuple[Any, str]:
    from cryptoface.model.file import load_model
    from cryptoface.model.random import random_model

    if args.model is not None:
        return load_model(args.model), str(args.model)
    n = (args.resolution // 32) ** 2
    packaged = Path(__file__).resolve().parent.parent / "assets" / f"cryptofacenet{n}.npz"
    if packaged.is_file():
        return load_model(packaged), str(packaged)
    return random_model(args.resolution, args.seed), f"random_model({args.resolution}, seed={args.seed})"


def _peak_rss_bytes() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)


def _start_profile() -> Any:
    import cProfile

    profiler = cProfile.Profile()
    profiler.enable()
    return profiler


def _profile_report(profiler: Any, total_s: float, top: int = 25) -> dict[str, Any]:
    """The functions (backend library calls included) that took the most of a profiled inference, self time."""
    import pstats

    profiler.disable()
    stats = pstats.Stats(profiler).stats  # {(file, line, name): (prim calls, calls, self s, cumulative s, callers)}
    rows = sorted(((v[2], v[1], k) for k, v in stats.items()), reverse=True)[:top]
    return {"inference_s": total_s, "note": "cProfile self time; builtin rows are the backend library's own calls",
            "top": [{"function": name if file == "~" else f"{Path(file).name}:{line} {name}", "calls": calls,
                     "self_s": round(self_s, 3), "share": round(self_s / total_s, 4)}
                    for self_s, calls, (file, line, name) in rows]}


def _plan(args: argparse.Namespace, slots: int, reserve: int) -> Any:
    from cryptoface.engine.linear import COST_MODELS
    from cryptoface.engine.plan import build_plan

    name = args.cost_model or (args.backend if args.backend in COST_MODELS else "desilofhe")
    return build_plan(args.resolution, slots, family=args.family, key_mode=args.key_mode, reserve=reserve,
                      cost_model=COST_MODELS[name]), name


def _print_table(rows: list[dict[str, Any]]) -> None:
    cols = ["layer", "kind", "level_in", "level_out", "in_cts", "out_cts", "diagonals", "ct_ct", "baby_rot",
            "giant_rot", "pre_rot", "n1", "keys", "cost_s"]
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(str(r.get(c, "")) for c in cols))


def run(args: argparse.Namespace) -> int:
    from cryptoface.backends import create_backend
    from cryptoface.engine.evaluator import EncryptedModel
    from cryptoface.engine.params import MATCHING_RESERVE_LEVELS, default_parameters
    from cryptoface.engine.plan import KEY_BYTES
    from cryptoface.model.reference import forward

    if args.profile:  # cProfile sees only the thread that enabled it
        if args.workers not in (None, 1):
            raise ParameterError("--profile measures one engine thread: drop --workers or use --workers 1")
        args.workers = 1
    params = default_parameters(args.resolution)
    plan, cost_name = _plan(args, params.slots, MATCHING_RESERVE_LEVELS)
    result: dict[str, Any] = {
        "resolution": args.resolution, "backend": args.backend, "family": args.family, "key_mode": args.key_mode,
        "params": {"log_ring": params.log_ring, "levels": params.levels, "scale_bits": params.scale_bits,
                   "key_switch_digits": params.key_switch_digits, "log_qp": params.log_qp},
        "plan": {"cost_model": cost_name, "totals": plan.totals(), "layers": plan.table(),
                 "rotation_keys": sorted(plan.rotation_keys), "template_stride": plan.template.stride,
                 "key_bytes_estimate": len(plan.rotation_keys) * KEY_BYTES},
    }
    if args.plan_only:
        _print_table(plan.table())
        print(json.dumps(plan.totals()))
        print(f"template stride {plan.template.stride}; rotation keys {len(plan.rotation_keys)} "
              f"(~{len(plan.rotation_keys) * KEY_BYTES / 1e9:.1f} GB at {KEY_BYTES / 1e6:.0f} MB each)")
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
        return 0

    if args.executor is not None:
        return run_scaleout(args, params, result)

    model, model_name = _load_model(args)
    result["model"] = model_name
    options = {"threads": args.threads} if args.backend == "openfhe" else (
        {"thread_count": args.threads} if args.backend == "desilofhe" else {})
    backend = create_backend(args.backend, params, **options)
    result["threads"] = args.threads
    t0 = time.perf_counter()
    backend.generate_keys(plan.rotation_keys)
    result["keygen_s"] = time.perf_counter() - t0
    try:
        keys = backend.export_evaluation_keys()
        by_kind: dict[str, int] = {}
        for name, blob in keys.items():
            kind = name.split(":", 1)[0]
            by_kind[kind] = by_kind.get(kind, 0) + len(blob)
        result["evaluation_key_bytes"] = by_kind
        del keys
    except Exception as exc:
        result["evaluation_key_bytes"] = {"error": str(exc)}
    em = EncryptedModel(model, backend, plan, workers=args.workers)
    result["workers"] = em.workers
    if args.random_input:
        x = np.random.default_rng(args.seed + 1).uniform(-1.0, 1.0, (3, args.resolution, args.resolution))
        result["input"] = "uniform noise"
    else:
        from cryptoface.assets import SAMPLES_DIR
        from cryptoface.face import preprocess

        photo = args.photo or SAMPLES_DIR / "obama3.jpg"
        x = preprocess(photo, args.resolution)
        result["input"] = str(photo)
    ref = forward(model, x)
    runs = []
    for i in range(max(1, args.runs)):
        t0 = time.perf_counter()
        cts = em.encrypt_input(x)
        enc_s = time.perf_counter() - t0
        upload = sum(len(backend.serialize(c)) for c in cts)
        profiler = _start_profile() if args.profile and i == 0 else None
        t0 = time.perf_counter()
        out, _ = em.infer(cts, progress=True)
        infer_s = time.perf_counter() - t0
        if profiler is not None:
            result["profile"] = _profile_report(profiler, infer_s)
        got = em.decrypt_template(out)
        err = float(np.max(np.abs(got - ref)))
        runs.append({"run": i, "encrypt_s": enc_s, "upload_bytes": upload, "infer_s": infer_s,
                     "max_abs_error": err, "rel_error": err / float(np.max(np.abs(ref))),
                     "output_level": backend.level(out),
                     "layers": [vars(r) for r in em.records]})
        print(f"run {i}: inference {infer_s:.1f} s, max abs error {err:.3g}", file=sys.stderr)
        del cts, out
    result["runs"] = runs
    result["encrypt_s"] = statistics.median(r["encrypt_s"] for r in runs)
    result["upload_bytes"] = runs[0]["upload_bytes"]
    result["infer_s_median"] = statistics.median(r["infer_s"] for r in runs)
    result["max_abs_error"] = max(r["max_abs_error"] for r in runs)
    result["rel_error"] = max(r["rel_error"] for r in runs)
    result["peak_rss_bytes"] = _peak_rss_bytes()
    summary = {k: result[k] for k in ("keygen_s", "encrypt_s", "upload_bytes", "infer_s_median", "max_abs_error",
                                      "rel_error", "peak_rss_bytes")}
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return 0


# -- patch-parallel units and sharded 1:N through an executor ------------------------------------------------
def _backend_options(args: argparse.Namespace) -> dict[str, Any]:
    if args.backend == "openfhe":
        return {"threads": args.threads}
    if args.backend == "desilofhe":
        return {"thread_count": args.threads}
    return {}


def _packed_gallery_vector(embs: np.ndarray, slots: int) -> np.ndarray:
    """The slot vector :func:`cryptoface.match.homomorphic.pack_gallery` makes of normalised templates ``embs``."""
    from cryptoface.match.layout import gallery_layout, normalised_layout

    norm, gal = normalised_layout(slots), gallery_layout(slots)
    out = np.zeros(slots)
    for n, e in enumerate(embs):
        out += np.roll(norm.pack(e, slots), gal.shift(n))
    return out


def run_scaleout(args: argparse.Namespace, params: Any, result: dict[str, Any]) -> int:
    """``bench --executor local|ray``: units (per-unit seconds, Ray overhead per request) and optional 1:N."""
    from cryptoface.backends import create_backend
    from cryptoface.cli.memory import drop_client_rotation_keys
    from cryptoface.engine.executor import create_executor
    from cryptoface.engine.layout import TemplateLayout as EngineTemplateLayout
    from cryptoface.engine.linear import COST_MODELS
    from cryptoface.engine.parallel import PatchParallelEngine, sharded_scores
    from cryptoface.engine.plan import NETWORK_LEVELS
    from cryptoface.engine.units import encrypt_units, unit_costs, unit_plan, unit_rotation_steps
    from cryptoface.match import homomorphic as hm
    from cryptoface.match.layout import gallery_layout, normalised_layout
    from cryptoface.match.levels import NORMALISE_LEVELS
    from cryptoface.model.reference import forward

    result.pop("plan", None)
    cost_name = args.cost_model or (args.backend if args.backend in COST_MODELS else "desilofhe")
    result["unit_costs"] = unit_costs(args.resolution, params.slots, params.levels, COST_MODELS[cost_name])
    result["unit_costs"]["cost_model"] = cost_name
    actors = args.workers or 1
    result.update(executor=args.executor, workers=actors if args.executor == "ray" else 1,
                  ray_address=args.ray_address, threads=args.threads)
    backend = create_backend(args.backend, params, **_backend_options(args))
    steps: set[int] = set()
    if not args.gallery_only:
        steps |= set(unit_rotation_steps(params.slots, params.levels))
    if args.gallery:
        steps |= set(hm.rotation_steps(EngineTemplateLayout(1, params.slots // 256), params.slots))
    t0 = time.perf_counter()
    backend.generate_keys(steps)
    result["keygen_s"] = time.perf_counter() - t0
    result["rotation_keys"] = len(steps)
    init = {"num_cpus": actors} if args.ray_address is None else {}
    executor = create_executor(args.executor, actors, args.ray_address, init_kwargs=init) \
        if args.executor == "ray" else create_executor("local", engine_workers=args.workers)
    result["engine_workers"] = 1 if args.executor == "ray" else (executor.worker.engine_workers or "default")
    try:
        t0 = time.perf_counter()
        keys = executor.keys("bench", args.backend, params, backend=backend)
        result["key_put_s"] = time.perf_counter() - t0
        if args.executor == "ray" and not args.gallery:
            # the driver only encrypts and decrypts from here on (with --gallery it also replicates the probe);
            # full-size OpenFHE keys in the driver, the object store and two actors would not fit 24 GB
            drop_client_rotation_keys(backend)
        result["key_load"] = executor.preload(keys)
        if not args.gallery_only:
            _bench_units(args, backend, executor, keys, result, encrypt_units, unit_plan, PatchParallelEngine, forward)
        if args.gallery:
            level = params.levels - NETWORK_LEVELS - NORMALISE_LEVELS  # a normalised template's level
            gal = gallery_layout(params.slots)
            rng = np.random.default_rng(args.seed + 7)
            chunks, counts = [], []
            t0 = time.perf_counter()
            for start in range(0, args.gallery, gal.capacity):
                n = min(gal.capacity, args.gallery - start)
                e = rng.standard_normal((n, 256))
                e /= np.linalg.norm(e, axis=1, keepdims=True)
                chunks.append(backend.serialize(backend.encrypt(_packed_gallery_vector(e, params.slots), level)))
                counts.append(n)
            enc_s = time.perf_counter() - t0
            probe = rng.standard_normal(256)
            probe /= np.linalg.norm(probe)
            rep = hm.replicate_probe(backend, backend.encrypt(normalised_layout(params.slots).pack(probe, params.slots),
                                                              level), gal)
            runs = []
            for i in range(max(1, args.runs)):
                t0 = time.perf_counter()
                scores = sharded_scores(executor, backend, keys, rep, chunks, counts)
                wall = time.perf_counter() - t0
                runs.append({"run": i, "wall_s": wall, **executor.last_report})
                print(f"1:N run {i}: {args.gallery} templates in {len(chunks)} chunks, {wall:.2f} s", file=sys.stderr)
            got = np.concatenate([backend.decrypt(backend.deserialize(s))[gal.score_slots(n)]
                                  for s, n in zip(scores, counts, strict=True)])
            result["gallery"] = {
                "templates": args.gallery, "chunks": len(chunks), "capacity": gal.capacity, "level": level,
                "chunk_bytes": len(chunks[0]), "score_bytes": len(scores[0]), "encrypt_s": enc_s, "runs": runs,
                "wall_s_median": statistics.median(r["wall_s"] for r in runs),
                "seconds_per_chunk": statistics.median(r.get("critical_path_s", r["wall_s"]) for r in runs)
                * min(result["workers"], len(chunks)) / len(chunks),
                "score_max_abs_error": float(np.max(np.abs(got - _clear_scores(rng, args, gal, probe)))),
            }
        if args.executor == "ray":
            sizes = [int(v) for v in args.transfer_sizes.split(",") if v]
            result["ray_transfer"] = [executor.transfer_seconds(n) for n in sizes]
            result["worker_stats"] = executor.stats()
            result["key_puts"] = executor.key_puts
            result["resubmissions"] = executor.resubmissions
    finally:
        executor.close()
    result["peak_rss_bytes"] = _peak_rss_bytes()
    summary = {k: result.get(k) for k in ("executor", "workers", "keygen_s", "infer_s_median", "unit_compute_s_median",
                                          "ray_overhead_s_median", "rel_error")}
    if "gallery" in result:
        summary["gallery_wall_s_median"] = result["gallery"]["wall_s_median"]
        summary["gallery_seconds_per_chunk"] = result["gallery"]["seconds_per_chunk"]
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return 0


def _clear_scores(rng: Any, args: argparse.Namespace, gal: Any, probe: np.ndarray) -> np.ndarray:
    """The clear cosines of the bench gallery (re-drawn from the same seed)."""
    rng = np.random.default_rng(args.seed + 7)
    out = []
    for start in range(0, args.gallery, gal.capacity):
        n = min(gal.capacity, args.gallery - start)
        e = rng.standard_normal((n, 256))
        e /= np.linalg.norm(e, axis=1, keepdims=True)
        out.append(e @ probe)
    return np.concatenate(out)


def _bench_units(args, backend, executor, keys, result, encrypt_units, unit_plan, engine_cls, forward) -> None:
    model, model_name = _load_model(args)
    result["model"] = model_name
    engine = engine_cls(executor, model)
    if args.random_input:
        x = np.random.default_rng(args.seed + 1).uniform(-1.0, 1.0, (3, args.resolution, args.resolution))
        result["input"] = "uniform noise"
    else:
        from cryptoface.assets import SAMPLES_DIR
        from cryptoface.face import preprocess

        photo = args.photo or SAMPLES_DIR / "obama3.jpg"
        x = preprocess(photo, args.resolution)
        result["input"] = str(photo)
    ref = forward(model, x)
    layout = unit_plan(backend.slots, backend.params.levels).template
    runs = []
    for i in range(max(1, args.runs)):
        t0 = time.perf_counter()
        cts = encrypt_units(backend, x)
        enc_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        out, _ = engine.infer(backend, keys, cts)
        infer_s = time.perf_counter() - t0
        got = layout.unpack(backend.decrypt(out))
        err = float(np.max(np.abs(got - ref)))
        runs.append({"run": i, "encrypt_s": enc_s, "infer_s": infer_s, "max_abs_error": err,
                     "rel_error": err / float(np.max(np.abs(ref))), "output_level": backend.level(out),
                     **engine.last_report})
        print(f"run {i}: inference {infer_s:.1f} s over {len(cts)} units, max abs error {err:.3g}", file=sys.stderr)
    result["runs"] = runs
    warm = runs[1:] or runs  # the first request also fills the workers' caches (plan structures, keys, weights)
    result["units"] = len(runs[0]["units"])
    result["infer_s_median"] = statistics.median(r["infer_s"] for r in warm)
    result["unit_compute_s_median"] = statistics.median(u["compute_s"] for r in warm for u in r["units"])
    result["unit_compute_s"] = [[u["compute_s"] for u in r["units"]] for r in runs]
    if args.executor == "ray":
        result["ray_overhead_s_median"] = statistics.median(r["ray_overhead_s"] for r in warm)
    result["request_overhead"] = {k: statistics.median(r[k] for r in warm) for k in
                                  ("serialize_inputs_s", "deserialize_partials_s", "combine_s")}
    result["upload_bytes"] = runs[0]["input_bytes"]
    result["partial_bytes"] = runs[0]["partial_bytes"]
    result["max_abs_error"] = max(r["max_abs_error"] for r in runs)
    result["rel_error"] = max(r["rel_error"] for r in runs)
