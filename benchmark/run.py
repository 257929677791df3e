#!/usr/bin/env python3
"""Run CryptoFace through the HE benchmark's face-verification harness (see benchmark/README.md).

    python3 benchmark/run.py 0                          # OpenFHE, 1 LFW pair, work folder /tmp/cryptoface-harness
    python3 benchmark/run.py 3 --backend simulator --large-pairs 16 --work /tmp/cf-sim
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cfsubmission.checkout import (
    DEFAULT_HARNESS,
    DEFAULT_LFW,
    DEFAULT_WORK,
    CheckoutError,
    RunPlan,
    run,
    venv_python,
)

BACKEND_ENV = "CRYPTOFACE_BENCH_BACKEND"


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Assemble a harness checkout, build its dataset and run the harness.")
    p.add_argument("size", type=int, choices=range(4), help="0 single (1 pair), 1 small (128), 2 medium (256), 3 large")
    p.add_argument("--backend", default=os.environ.get(BACKEND_ENV) or "openfhe",
                   help="openfhe (default), desilofhe or simulator (not encryption: for tests)")
    p.add_argument("--work", type=Path, default=DEFAULT_WORK, help=f"checkout folder (default {DEFAULT_WORK})")
    p.add_argument("--harness", type=Path, default=DEFAULT_HARNESS, help="the harness copy (harness/, scripts/)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--lfw-dir", type=Path, default=DEFAULT_LFW, help="LFW folder with pairs.txt (default)")
    source.add_argument("--csv", type=Path, help="a pairs CSV (image1,image2,same) instead of LFW")
    p.add_argument("--dataset-pairs", type=int, help="pairs in the dataset (default: the size's pair count)")
    p.add_argument("--large-pairs", type=int, help="pairs of size 3 (sets FACE_LARGE_PAIRS; upstream 1,024)")
    p.add_argument("--params", help="CKKS parameters as JSON or a JSON file (CRYPTOFACE_BENCH_PARAMS; default "
                   "cryptoface.params.default_parameters, one-round protocol, 128-bit)")
    p.add_argument("--model", help="fused model file (CRYPTOFACE_BENCH_MODEL; default the bundled CryptoFaceNet4)")
    p.add_argument("--num-runs", type=int, default=1, help="runs of stages 4-10 (the harness's --num_runs)")
    p.add_argument("--seed", type=int, help="pair sampling seed (the harness's default: 42)")
    p.add_argument("--python", type=Path, help="interpreter to run the harness with (default: the backend's venv)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    env = dict(os.environ, **{BACKEND_ENV: args.backend})
    if args.large_pairs is not None:
        env["FACE_LARGE_PAIRS"] = str(args.large_pairs)
    if args.params:
        env["CRYPTOFACE_BENCH_PARAMS"] = args.params
    if args.model:
        env["CRYPTOFACE_BENCH_MODEL"] = str(Path(args.model).resolve())
    try:
        # absolute, but not resolved: a venv's python is a link whose target would lose the venv
        python = Path(os.path.abspath(args.python)) if args.python else venv_python(args.backend)
        plan = RunPlan(args.work.resolve(), args.size, python, env, args.harness.resolve(),
                       None if args.csv else args.lfw_dir.resolve(), args.csv.resolve() if args.csv else None,
                       args.dataset_pairs, args.num_runs, args.seed)
        status = run(plan)
    except (CheckoutError, subprocess.CalledProcessError, OSError) as exc:
        print(f"run.py: {exc}", file=sys.stderr)
        return 1
    results = sorted(plan.measurements.glob("results-*.json"))
    print(f"\n[run.py] harness exit status {status}; checkout {plan.work}")
    print(f"[run.py] measurements: {', '.join(str(r) for r in results) or f'none in {plan.measurements}'}")
    print(f"[run.py] predictions: {plan.io_dir / 'encrypted_model_predictions.txt'}")
    return status


if __name__ == "__main__":
    sys.exit(main())
