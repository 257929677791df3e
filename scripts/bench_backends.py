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


CPU_MS: dict[str, float] = {}


def _median_ms(fn, repeats: int, warmup: int = 1, label: str = "") -> float:
    """Median wall ms; the median process-CPU ms goes to CPU_MS[label] (robust to other load on the box)."""
    for _ in range(warmup):
        fn()
    times, cpu = [], []
    for _ in range(repeats):
        c, t = time.process_time(), time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
        cpu.append((time.process_time() - c) * 1000)
    if label:
        CPU_MS[label] = round(statistics.median(cpu), 2)
    return round(statistics.median(times), 2)


def bench(name: str, threads: int, log_ring: int, levels: int, repeats: int) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "src"))
    from cryptoface.backends import create_backend
    from cryptoface.backends.protocol import CkksParameters

    params = CkksParameters(log_ring=log_ring, levels=levels)
    t0 = time.perf_counter()
    b = create_backend(name, params, threads=threads)  # every backend takes threads (the simulator ignores it)
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

    def timed(label: str, fn, warmup: int = 1) -> None:
        ms[label] = _median_ms(fn, repeats, warmup=warmup, label=label)

    timed("encode", lambda: b.encode(x, top))
    timed("encrypt", lambda: b.encrypt(x))
    timed("decrypt", lambda: b.decrypt(ct))
    timed("mul_plain (no rescale)", lambda: b.mul_plain(ct, pt))
    received = b.deserialize(b.serialize(ct))
    timed("mul_plain on a received ciphertext (deserialize)", lambda: b.mul_plain(received, pt))
    if name == "openfhe":  # what deserialize avoids by re-attaching to the context (OpenFHEBackend._rebind)
        import openfhe

        raw = openfhe.DeserializeCiphertextString(openfhe.Serialize(ct, openfhe.BINARY), openfhe.BINARY)
        timed("mul_plain on a library-deserialised ciphertext", lambda: b.mul_plain(raw, pt))
    timed("rescale", lambda: b.rescale(prod))
    timed("multiply_accumulate of 16", lambda: b.multiply_accumulate(cts, pts))
    timed("mul + relin (no rescale)", lambda: b.mul(ct, ct2))
    timed("add", lambda: b.add(ct, ct2))
    timed("rotate (top level)", lambda: b.rotate(ct, 1))
    timed("rotate_many of 8 (hoisted)", lambda: b.rotate_many(ct, steps))
    timed("level_down to 3", lambda: b.level_down(ct, 3))

    keygen = _one_rotation_keygen(name, b)
    if keygen is not None:
        timed("keygen one rotation key (top)", keygen, warmup=0)
    out["ms"] = ms
    out["cpu_ms (process CPU time, all threads)"] = dict(CPU_MS)
    out["loadavg_1min_at_end"] = os.getloadavg()[0]
    keys = b.export_evaluation_keys()
    out["bytes"] = {
        "rotation key (top)": len(keys["rotation:1"]),
        "relin key": len(keys["relin"]),
        "public key (+context for openfhe)": len(keys["public"]),
        "ciphertext (top level)": len(b.serialize(ct)),
        "ciphertext (level 3)": len(b.serialize(b.level_down(ct, 3))),
    }
    if name == "desilofhe":
        out["gil_rotate"] = _gil_probe(lambda: b.engine.rotate(ct.ct, b._rot[1]))
        out["gil_mul_plain"] = _gil_probe(lambda: b.engine.multiply(ct.ct, pt))
    elif name == "openfhe":
        out["gil_rotate"] = _gil_probe(lambda: b.cc.EvalRotate(ct, 1))
        out["gil_mul_plain"] = _gil_probe(lambda: b.cc.EvalMult(ct, pt))
    return out


def _one_rotation_keygen(name: str, b: Any):
    counter = iter(range(100, 10_000))
    if name == "desilofhe":
        return lambda: b.engine.create_fixed_rotation_key(b._secret, next(counter))
    if name == "openfhe":
        return lambda: b.cc.EvalAutomorphismKeyGen(b._secret, [b.cc.FindAutomorphismIndex(next(counter))])
    return None


def _gil_probe(op, calls: int = 3) -> dict[str, float]:
    """Does ``op`` (one library call) release the GIL? A pure-Python thread counts while it runs.

    ``share`` = counter progress during the calls / progress at the same rate while idle: ~0 means the GIL
    was held for the whole call, clearly > 0 means another Python thread ran meanwhile (released). This is
    robust to other load on the machine, unlike a 1-vs-2-thread wall-time ratio.
    """
    count = 0
    stop = False

    def spin() -> None:
        nonlocal count
        while not stop:
            count += 1

    th = threading.Thread(target=spin, daemon=True)
    th.start()
    time.sleep(0.05)
    c0, t0 = count, time.perf_counter()
    time.sleep(0.2)
    idle_rate = (count - c0) / (time.perf_counter() - t0)
    busy, during = 0.0, 0
    for _ in range(calls):
        c0, t0 = count, time.perf_counter()
        op()
        busy += time.perf_counter() - t0
        during += count - c0
    stop = True
    th.join()
    share = during / (idle_rate * busy) if idle_rate and busy else 0.0
    return {"op_ms_with_spinner": round(busy / calls * 1000, 1), "share": round(share, 2),
            "released": share > 0.2}


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
