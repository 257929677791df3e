"""``cryptoface bench``: time encrypted CryptoFaceNet inference on one backend, or print the plan's counts.

Argument parsing and printing only; the measurements are :mod:`cryptoface.bench`'s.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from cryptoface.cli.device import add_device_arguments
from cryptoface.engine.layout import DEFAULT_FAMILY, FAMILIES
from cryptoface.errors import DataError
from cryptoface.params import DEFAULT_PROTOCOL, PROTOCOLS


def register(sub: Any) -> None:
    p = sub.add_parser("bench", help="benchmark encrypted inference (keygen, encryption, per-layer time, error)")
    p.add_argument("--resolution", type=int, choices=(64, 96, 128), default=64)
    p.add_argument("--protocol", choices=PROTOCOLS, default=DEFAULT_PROTOCOL,
                   help="the parameters of: refresh (default; Net4's trunk, 21 levels, the client doing the last 2 in "
                        "the clear; 23 for Net9/16) or one-round (30: the template keeps matching's levels)")
    p.add_argument("--backend", choices=("simulator", "desilofhe", "openfhe"), default="simulator")
    p.add_argument("--model", type=Path, default=None,
                   help="fused model file (default: the packaged model if present, else a random model)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--workers", type=int, default=None,
                   help="engine threads (parallel giant steps and rotations; default: one per CPU, at most 2, on "
                        "a thread-safe backend, i.e. not desilofhe); "
                        "with --executor ray the number of actors (default 1)")
    p.add_argument("--threads", type=int, default=1,
                   help="the backend's own threads (OpenFHE OpenMP threads, desilofhe's engine threads)")
    add_device_arguments(p)
    p.add_argument("--keep-plaintexts", action=argparse.BooleanOptionalAction, default=None,
                   help="encode the weight plaintexts once (an untimed first inference) and keep them for the timed "
                        "runs (default: on a GPU only)")
    p.add_argument("--plaintext-budget-gb", type=float, default=None,
                   help="bytes of full plaintexts kept, in GB; the rest are kept in compact form (default: 60 %% "
                        "of the GPU's memory, 8 GB on the CPU)")
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


def _options(args: argparse.Namespace) -> dict[str, Any]:
    return {"resolution": args.resolution, "backend": args.backend, "protocol": args.protocol,
            "model": args.model, "runs": args.runs,
            "workers": args.workers, "threads": args.threads, "family": args.family, "key_mode": args.key_mode,
            "cost_model": args.cost_model, "seed": args.seed, "photo": args.photo,
            "random_input": args.random_input, "profile": args.profile, "device": args.device,
            "keep_plaintexts": args.keep_plaintexts, "plaintext_budget_gb": args.plaintext_budget_gb}


def _transfer_sizes(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise DataError(f"--transfer-sizes takes comma-separated byte counts, got {text!r}") from exc


def _print_plan(report: Any) -> None:
    cols = ["layer", "kind", "level_in", "level_out", "in_cts", "out_cts", "diagonals", "ct_ct", "baby_rot",
            "giant_rot", "pre_rot", "n1", "keys", "cost_s"]
    print(" | ".join(cols))
    for r in report.plan.layers:
        print(" | ".join(str(r.get(c, "")) for c in cols))
    print(json.dumps(report.plan.totals))
    n = len(report.plan.rotation_keys)
    output = ("output: the last block (clear tail: the client does the pool quadratic and the head)"
              if report.plan.clear_tail else f"template stride {report.plan.template_stride}")
    print(f"{output}; rotation keys {n} "
          f"(~{report.plan.key_bytes_estimate / 1e9:.2f} GB at this size, modelled on OpenFHE's serialised keys)")


def run(args: argparse.Namespace) -> int:
    from cryptoface import bench

    if args.plan_only:
        report = bench.plan_report(bench.InferenceOptions(**_options(args)))
        _print_plan(report)
    elif args.executor is not None:
        options = bench.ScaleoutOptions(**_options(args), executor=args.executor, ray_address=args.ray_address,
                                        gallery=args.gallery, gallery_only=args.gallery_only,
                                        transfer_sizes=_transfer_sizes(args.transfer_sizes))
        report = bench.run_scaleout(options, progress=True)
        print(json.dumps(report.summary(), indent=2))
    else:
        report = bench.run_inference(bench.InferenceOptions(**_options(args)), progress=True)
        print(json.dumps(report.summary(), indent=2))
    if args.json:
        args.json.write_text(report.to_json())
    return 0
