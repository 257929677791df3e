#!/usr/bin/env python
"""Micro-benchmark of the CKKS backends through the protocol; prints JSON to stdout.

One backend per process (desilofhe and OpenFHE live in different venvs):

    .venv/bin/python scripts/bench_backends.py --backend desilofhe
    .venv-openfhe/bin/python scripts/bench_backends.py --backend openfhe --threads 2

``--all`` runs desilofhe (1 thread) in .venv and OpenFHE (1 and 2 threads) in .venv-openfhe as
subprocesses and prints one JSON object with all three. Times are medians in ms over ``--repeats`` runs
after one warm-up; the defaults are N = 2^16 and 24 levels.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def _median_ms(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return round(statistics.median(times), 2)


def bench(name: str, threads: int, log_ring: int, levels: int, repeats: int) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "src"))
    from cryptoface.backends import create_backend
    from cryptoface.backends.protocol import CkksParameters

    params = CkksParameters(log_ring=log_ring, levels=levels)
    option = {"desilofhe": "thread_count", "openfhe": "threads"}.get(name)
    t0 = time.perf_counter()
    b = create_backend(name, params, **({option: threads} if option else {}))
    setup_ms = (time.perf_counter() - t0) * 1000
    steps = list(range(1, 9))
    t0 = time.perf_counter()
    b.generate_keys(steps)
    keygen_all_ms = (time.perf_counter() - t0) * 1000

    rng = np.random.default_rng(0)
    x, y = rng.uniform(-1, 1, b.slots), rng.uniform(-1, 1, b.slots)
    top = params.levels
    ct, ct2 = b.encrypt(x), b.encrypt(y)
    pt = b.encode(y, top)
    prod = b.mul_plain(ct, pt)
    cts = [b.encrypt(np.roll(x, i)) for i in range(16)]
    pts = [b.encode(np.roll(y, i), top) for i in range(16)]

    out: dict[str, Any] = {
        "backend": name,
        "threads": threads,
        "log_ring": log_ring,
        "levels": levels,
        "slots": b.slots,
        "repeats": repeats,
        "setup_ms": round(setup_ms, 1),
        "keygen_all_ms (sk, pk, relin, 8 rotation keys)": round(keygen_all_ms, 1),
    }
    ms: dict[str, float] = {}
    ms["encode"] = _median_ms(lambda: b.encode(x, top), repeats)
    ms["encrypt"] = _median_ms(lambda: b.encrypt(x), repeats)
    ms["decrypt"] = _median_ms(lambda: b.decrypt(ct), repeats)
    ms["mul_plain (no rescale)"] = _median_ms(lambda: b.mul_plain(ct, pt), repeats)
    ms["rescale"] = _median_ms(lambda: b.rescale(prod), repeats)
    ms["multiply_accumulate of 16"] = _median_ms(lambda: b.multiply_accumulate(cts, pts), repeats)
    ms["mul + relin (no rescale)"] = _median_ms(lambda: b.mul(ct, ct2), repeats)
    ms["add"] = _median_ms(lambda: b.add(ct, ct2), repeats)
    ms["rotate (top level)"] = _median_ms(lambda: b.rotate(ct, 1), repeats)
    ms["rotate_many of 8 (hoisted)"] = _median_ms(lambda: b.rotate_many(ct, steps), repeats)
    ms["level_down to 3"] = _median_ms(lambda: b.level_down(ct, 3), repeats)

    keygen = _one_rotation_keygen(name, b)
    if keygen is not None:
        ms["keygen one rotation key (top)"] = _median_ms(keygen, repeats, warmup=0)
    out["ms"] = ms
    keys = b.export_evaluation_keys()
    out["bytes"] = {
        "rotation key (top)": len(keys["rotation:1"]),
        "relin key": len(keys["relin"]),
        "public key (+context for openfhe)": len(keys["public"]),
        "ciphertext (top level)": len(b.serialize(ct)),
        "ciphertext (level 3)": len(b.serialize(b.level_down(ct, 3))),
    }
    if name == "desilofhe":
        out["gil"] = _gil_ratio(b, ct, pt)
    return out


def _one_rotation_keygen(name: str, b: Any):
    counter = iter(range(100, 10_000))
    if name == "desilofhe":
        return lambda: b.engine.create_fixed_rotation_key(b._secret, next(counter))
    if name == "openfhe":
        return lambda: b.cc.EvalAutomorphismKeyGen(b._secret, [b.cc.FindAutomorphismIndex(next(counter))])
    return None


def _gil_ratio(b: Any, ct: Any, pt: Any, ops: int = 4) -> dict[str, float]:
    """wall(2 Python threads x ops) / wall(1 thread x ops): ~1 = GIL released, ~2 = held."""

    def work() -> None:
        for _ in range(ops):
            b.mul_plain(ct, pt)

    t = time.perf_counter()
    work()
    one = time.perf_counter() - t
    threads = [threading.Thread(target=work) for _ in range(2)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    two = time.perf_counter() - t
    return {"mul_plain_1thread_s": round(one, 3), "mul_plain_2threads_s": round(two, 3),
            "ratio": round(two / one, 2), "cpus": os.cpu_count() or 0}


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    runs = [(".venv", "desilofhe", 1), (".venv-openfhe", "openfhe", 1), (".venv-openfhe", "openfhe", 2)]
    results = []
    for venv, name, threads in runs:
        python = ROOT / venv / "bin" / "python"
        cmd = [str(python), __file__, "--backend", name, "--threads", str(threads), "--log-ring", str(args.log_ring),
               "--levels", str(args.levels), "--repeats", str(args.repeats)]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if proc.returncode != 0:
            results.append({"backend": name, "threads": threads, "error": proc.stderr[-2000:]})
            continue
        results.append(json.loads(proc.stdout[proc.stdout.index("{"):]))
    return {"runs": results}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="desilofhe", help="simulator, desilofhe or openfhe")
    ap.add_argument("--all", action="store_true", help="desilofhe (.venv) and openfhe at 1 and 2 threads")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--log-ring", type=int, default=16)
    ap.add_argument("--levels", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    result = run_all(args) if args.all else bench(args.backend, args.threads, args.log_ring, args.levels, args.repeats)
    # OpenFHE prints a line to stdout when a context is deserialised; keep the JSON on its own line
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
