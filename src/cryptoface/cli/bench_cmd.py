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


def register(sub: Any) -> None:
    p = sub.add_parser("bench", help="benchmark encrypted inference (keygen, encryption, per-layer time, error)")
    p.add_argument("--resolution", type=int, choices=(64, 96, 128), default=64)
    p.add_argument("--backend", choices=("simulator", "desilofhe", "openfhe"), default="simulator")
    p.add_argument("--model", type=Path, default=None,
                   help="fused model file (default: the packaged model if present, else a random model)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--workers", type=int, default=1, help="engine threads (parallel giant steps and rotations)")
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

    model, model_name = _load_model(args)
    result["model"] = model_name
    options = {"threads": args.threads} if args.backend == "openfhe" else (
        {"thread_count": args.threads} if args.backend == "desilofhe" else {})
    backend = create_backend(args.backend, params, **options)
    result["threads"] = args.threads
    result["workers"] = args.workers
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
        t0 = time.perf_counter()
        out, _ = em.infer(cts, progress=True)
        infer_s = time.perf_counter() - t0
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
